"""VPN semantics over the DTLS core, still sans-I/O: prefixes, routing, inner IP packets."""
