"""Shinchoku: the command line and the ministry client."""
