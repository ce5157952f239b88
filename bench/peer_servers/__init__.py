"""Peer servers for `python -m bench peers`: the same model file served by the servers users
compare ortserve with. Each `serve_*.py` runs in that server's own virtual environment
(`.peers/<name>`, made by bench/peers.py) and imports nothing from `app`."""
