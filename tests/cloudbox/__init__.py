"""The EC2 in a box: moto for the API, each instance a booted systemd-nspawn container (see box.py)."""
