"""Face detection, landmarks and alignment behind one interface."""
