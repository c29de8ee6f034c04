import { WebRTCPlayer } from "@eyevinn/webrtc-player"; window.WebRTCPlayer = WebRTCPlayer;
