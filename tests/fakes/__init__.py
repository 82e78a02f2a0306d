"""Local stand-ins for cloud endpoints: loopback HTTP servers in each API's wire format."""
