"""The security suite: attacks on worker links and on the HTTP front door."""
