"""Small helpers every part of the project shares, one per concept: atomic file writes (`files`),
content hashes (`hashing`), and the choice of device and autocast (`devices`)."""
