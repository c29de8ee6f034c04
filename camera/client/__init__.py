"""The viewer side: clients that watch or steer a camera (CLI viewer, pan/tilt client).

Everything here signs as a paired viewer and checks the camera's signed
answers; nothing here runs on the camera.
"""
