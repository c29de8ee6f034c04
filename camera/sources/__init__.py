"""Camera sources: each yields one encoded H.264 stream of :class:`EncodedFrame`."""
