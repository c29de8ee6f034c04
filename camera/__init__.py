"""The peercam device agent: sources, fan-out, viewer sessions, identity."""
