/* The TUN's read side in C (part of dtlsvpn.daemon._lane): internet checksums and the
 * cutting of a TSO super-packet, exactly as dtlsvpn/vpn/vnet.py does them in Python
 * (tests/unit/test_vnet_compiled.py holds the two to the same bytes).  _vnet.c. */
#ifndef DTLSVPN_VNET_H
#define DTLSVPN_VNET_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Complete the partial checksum of a NEEDS_CSUM packet in place: the 16 bits at
 * ``start + offset`` hold the pseudo-header sum, the rest of ``[start:]`` is added.
 * 0, or -1 when the offsets do not fit the packet (vnet.segment then returns []). */
int vnet_complete(unsigned char *pkt, Py_ssize_t n, unsigned start, unsigned offset);

/* segment(frame) -> list[bytes]: vnet.segment in C (module function of _lane). */
PyObject *vnet_segment(PyObject *module, PyObject *frame);

#endif
