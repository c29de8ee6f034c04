"""What ships to the device: systemd units, the default config, the Pi install script."""
