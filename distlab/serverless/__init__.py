"""The serverless lab on the host: `distlab fn ...` (cli.py) through one client of the
runner (client.py), registered by lab.py."""
