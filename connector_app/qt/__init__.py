"""The tray app: the only package that imports Qt. It shows state and forwards intent."""
