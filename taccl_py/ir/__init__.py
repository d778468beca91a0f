"""The algorithm IR: transfers between ranks, their checks, JSON both ways."""
