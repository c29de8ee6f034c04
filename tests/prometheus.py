"""promtool and sample lookups, for the tests of peercam's Prometheus metrics."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families


def promtool(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


def assert_lint_clean(text: str) -> None:
    """``promtool check metrics``: a valid exposition with no lint problem at all."""
    result = promtool("check", "metrics", text=text)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (the labels given must match; others are ignored)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")
