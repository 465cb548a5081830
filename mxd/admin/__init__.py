"""The admin web interface (twisted.web), on loopback by default."""
