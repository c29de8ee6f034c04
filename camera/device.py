"""The whole device: camera agent plus the hardware and local interfaces the config names.

This is where backends are chosen (hardware behind an injected seam): the status LED and the pairing
button on gpiozero (mock pins where there is no GPIO, or with
``[hardware] gpio_mock``), the pan/tilt head and the serial console on pyserial,
the control socket for ``peercam status``, and systemd notifications. Every
piece of hardware is opened here, and only here.

Start order: LED (so "booting" shows at once), agent, control socket, button,
console. Close order is the reverse, so no callback reaches a closed agent.
A hardware part that fails to start is logged and left out: the camera streams
without its LED rather than not at all.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from camera.agent import CameraAgent
from camera.config import CameraConfig, make_configured_source
from camera.control import ControlServer
from camera.identity import DeviceIdentity
from camera.ptz import open_head
from camera.sdnotify import Notifier
from camera.status import DeviceStatus

logger = logging.getLogger(__name__)


class Device:
    """Owns the agent and every attachment; :meth:`close` is safe twice."""

    def __init__(
        self,
        config: CameraConfig,
        *,
        identity: DeviceIdentity | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
        pin_factory: Any | None = None,
    ) -> None:
        self.config = config
        self.identity = identity or DeviceIdentity.load_or_create(config.state_dir)
        self.notifier = notifier or Notifier(None)
        self._watchdog_interval = watchdog_interval
        self._pin_factory = pin_factory
        self.led: Any | None = None
        self.button: Any | None = None
        self.console: Any | None = None
        self.control: ControlServer | None = None
        self.agent: CameraAgent | None = None
        self._closed = False

    def _factory(self) -> Any | None:
        if self._pin_factory is None:
            from hardware.gpio import pin_factory

            self._pin_factory = pin_factory(self.config.hardware.gpio_mock)
        return self._pin_factory

    def _start_led(self) -> None:
        hw = self.config.hardware
        if hw.led_pin is None:
            return
        from hardware.led import LedState, StatusLed

        try:
            self.led = StatusLed(hw.led_pin, active_high=hw.led_active_high,
                                 pin_factory=self._factory(), pwm=hw.led_pwm)
            self.led.set(LedState.BOOTING)
        except Exception as exc:
            logger.error("status LED on GPIO %d: %s (carrying on without it)", hw.led_pin, exc)
            self.led = None

    def _start_button(self, agent: CameraAgent) -> None:
        hw = self.config.hardware
        if hw.button_pin is None:
            return
        import asyncio

        from hardware.button import PairingButton

        try:
            self.button = PairingButton(
                hw.button_pin,
                loop=asyncio.get_running_loop(),
                on_short=agent.button_short,
                on_long_armed=agent.button_armed,
                on_long=agent.button_long,
                on_cancel=agent.button_cancel,
                pull_up=hw.button_pull_up,
                bounce=hw.button_bounce,
                long_press=hw.long_press,
                # A press longer than this (and shorter than long_press) is cancelled.
                short_max=min(2.0, hw.long_press / 2),
                pin_factory=self._factory(),
            )
        except Exception as exc:
            logger.error("pairing button on GPIO %d: %s (carrying on without it)",
                         hw.button_pin, exc)
            self.button = None

    async def _start_console(self, agent: CameraAgent) -> None:
        hw = self.config.hardware
        if hw.console_port is None:
            return
        from camera.console import SerialConsole

        console = SerialConsole(hw.console_port, ConsoleBackend(agent),
                                baudrate=hw.console_baudrate)
        try:
            await console.start()
        except Exception as exc:
            logger.error("serial console on %s: %s (carrying on without it)",
                         hw.console_port, exc)
            return
        self.console = console

    async def start(self) -> CameraAgent:
        """Start everything; returns the running agent."""
        self._start_led()
        config = self.config
        agent = CameraAgent(
            config,
            make_configured_source(config),
            self.identity,
            source_factory=lambda: make_configured_source(config),
            led=self.led,
            notifier=self.notifier,
            watchdog_interval=self._watchdog_interval,
            head=open_head(config.hardware),
        )
        self.agent = agent
        await agent.start()
        control = ControlServer(config.control_socket_path, agent)
        try:
            await control.start()
            self.control = control
        except Exception as exc:
            logger.error("%s (carrying on without peercam status)", exc)
        self._start_button(agent)
        await self._start_console(agent)
        return agent

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.console is not None:
            await self.console.close()
        if self.button is not None:
            self.button.close()
        if self.control is not None:
            await self.control.close()
        if self.agent is not None:
            await self.agent.close()
        if self.led is not None:
            with contextlib.suppress(Exception):
                self.led.close()
        self.notifier.close()


class ConsoleBackend:
    """What the serial console may ask of the agent (status, ID, a pairing link)."""

    def __init__(self, agent: CameraAgent) -> None:
        self._agent = agent
        self.device_id = agent.device_id

    async def status(self) -> DeviceStatus:
        return self._agent.status()

    async def pair(self) -> tuple[str, float]:
        return self._agent.open_pairing_link()
