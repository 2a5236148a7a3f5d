"""Several front-end processes for one engine (`--api-processes N`): the launcher, the shared admission."""
