"""The on-disk model repository: the manifest schema, scanning and verifying versions,
publishing new ones (trainer and `ortserve import`), and the explanation background format."""
