"""What runs on servers: the rendezvous (signaling + web viewer)."""
