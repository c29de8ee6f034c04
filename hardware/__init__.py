"""GPIO status LED, button and serial devices (injectable, mockable)."""
