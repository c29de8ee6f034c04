"""Chooses a camera source by name; the only place that knows them all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from camera.errors import BadConfig
from camera.sources.base import Source, VideoSettings

logger = logging.getLogger(__name__)


def _testpattern(settings: VideoSettings, **options: Any) -> Source:
    from camera.sources.testpattern import TestPatternSource

    return TestPatternSource(settings, **options)


def _file(settings: VideoSettings, **options: Any) -> Source:
    from camera.sources.file import FileSource

    if "path" not in options:
        raise BadConfig("source 'file' needs path=<an .mp4 or .h264 file>")
    return FileSource(settings, **options)


def _v4l2(settings: VideoSettings, **options: Any) -> Source:
    from camera.sources.v4l2 import V4L2Source

    return V4L2Source(settings, **options)


def _picamera2(settings: VideoSettings, **options: Any) -> Source:
    from camera.sources.picamera2 import Picamera2Source

    return Picamera2Source(settings, **options)


_FACTORIES: dict[str, Callable[..., Source]] = {
    "testpattern": _testpattern,
    "file": _file,
    "v4l2": _v4l2,
    "picamera2": _picamera2,
}

#: The names ``make_source`` accepts.
SOURCE_NAMES = tuple(_FACTORIES)


def make_source(name: str, settings: VideoSettings, **options: Any) -> Source:
    """Build the source called ``name``; ``options`` go to its constructor.

    ``file`` needs ``path``; ``v4l2`` takes ``device`` and ``input_format``;
    ``picamera2`` takes ``camera_num``.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise BadConfig(f"unknown camera source {name!r}: choose one of {', '.join(SOURCE_NAMES)}")
    try:
        source = factory(settings, **options)
    except TypeError as exc:
        raise BadConfig(f"bad options for source {name!r}: {exc}") from exc
    logger.debug("camera source %s: %s", name, settings)
    return source
