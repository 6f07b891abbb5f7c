"""dtlsvpn's benchmark (``make bench``): dtlsvpn side by side with OpenVPN, wireguard-go,
ocserv and the bare veth link in two network namespaces, plus figures of the sans-I/O
core alone.  Not a test: nothing here asserts a speed.  See bench/README.md."""
