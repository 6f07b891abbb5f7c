/* The TUN's read side in C: dtlsvpn/vpn/vnet.py's ``segment`` with its checksums.
 *
 * Why: with TSO offered on the TUN (TUN_F_CSUM | TSO4 | TSO6), one read hands over up
 * to 64 KiB of one TCP flow instead of one segment, and the kernel neither segments nor
 * checksums it; the reader must.  In Python an internet checksum of 1 374 bytes costs
 * 5-6 us here, more than the kernel work it saves (README "Performance"), so TSO is
 * offered only when this file is built (daemon/tun.py).  The semantics are vnet.py's,
 * byte for byte, malformed frames included (tests/unit/test_vnet_compiled.py).
 *
 * Checksums (RFC 1071 §2): the one's complement sum is independent of byte order, so
 * the words are summed in the machine's order, 32 bits at a time into 64, reduced
 * modulo 0xFFFF (2^16 = 1 there) and stored in the machine's order; the checksum is
 * ``-sum mod 0xFFFF`` (0 for a sum that is a multiple of 0xFFFF), as vnet.checksum.
 */
#include "_vnet.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define VNET_HDR_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define TCP_PROTO 6
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

/* ``s`` plus the sum of ``p[:n]`` as 16-bit words (an odd last byte padded with zero). */
static uint64_t csum_add(const unsigned char *p, Py_ssize_t n, uint64_t s) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        s += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        s += w;
        p += 2;
        n -= 2;
    }
    if (n) { /* the high byte of a big-endian word */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        s += p[0];
#else
        s += (uint64_t)p[0] << 8;
#endif
    }
    return s;
}

/* Store the checksum that makes ``s`` verify at ``at`` (two bytes, unaligned); 0 as
 * 0xFFFF when ``mangle`` (vnet._complete: a UDP checksum of 0 means none). */
static void csum_store(unsigned char *at, uint64_t s, int mangle) {
    uint64_t t = s % 0xFFFF;
    uint16_t v = t ? (uint16_t)(0xFFFF - t) : (mangle ? 0xFFFF : 0);
    memcpy(at, &v, 2);
}

static void put_be16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

int vnet_complete(unsigned char *pkt, Py_ssize_t n, unsigned start, unsigned offset) {
    Py_ssize_t at = (Py_ssize_t)start + offset;
    if (at + 2 > n || (Py_ssize_t)start >= n)
        return -1;
    csum_store(pkt + at, csum_add(pkt + start, n - start, 0), 1);
    return 0;
}

/* vnet._segment_tcp: ``p[:size]`` (the packet after the header) cut into segments of
 * ``mss`` payload bytes, appended to ``out``; 0, or -1 with an exception set. */
static int segment_tcp(const unsigned char *p, Py_ssize_t size, int v4, Py_ssize_t mss,
                       PyObject *out) {
    Py_ssize_t ihl;
    if (v4) {
        if (size < 40 || p[0] >> 4 != 4)
            return 0;
        ihl = (p[0] & 0x0F) * 4;
    } else {
        if (size < 60 || p[0] >> 4 != 6 || p[6] != TCP_PROTO)
            return 0;
        ihl = 40;
    }
    if (ihl < 20 || ihl + 20 > size)
        return 0;
    Py_ssize_t thlen = (p[ihl + 12] >> 4) * 4;
    Py_ssize_t hl = ihl + thlen;
    if (thlen < 20 || hl > size)
        return 0;
    /* the pseudo-header's addresses and protocol (its length is added per segment) */
    uint64_t pseudo = csum_add(p + (v4 ? 12 : 8), v4 ? 8 : 32, htons(TCP_PROTO));
    uint32_t seq0 = (uint32_t)p[ihl + 4] << 24 | (uint32_t)p[ihl + 5] << 16 |
                    (uint32_t)p[ihl + 6] << 8 | p[ihl + 7];
    unsigned char flags = p[ihl + 13];
    unsigned ident = v4 ? (unsigned)p[4] << 8 | p[5] : 0;
    Py_ssize_t offset = hl;
    for (unsigned index = 0; offset < size; index++) {
        Py_ssize_t end = offset + mss < size ? offset + mss : size;
        Py_ssize_t clen = end - offset;
        PyObject *seg = PyBytes_FromStringAndSize(NULL, hl + clen);
        if (seg == NULL)
            return -1;
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(seg);
        memcpy(d, p, (size_t)hl);
        memcpy(d + hl, p + offset, (size_t)clen);
        unsigned char *tcp = d + ihl;
        unsigned char f = end >= size ? flags : (unsigned char)(flags & ~(TCP_FIN | TCP_PSH));
        if (index)
            f &= (unsigned char)~TCP_CWR;
        tcp[13] = f;
        uint32_t seq = seq0 + (uint32_t)(offset - hl);
        tcp[4] = (unsigned char)(seq >> 24);
        tcp[5] = (unsigned char)(seq >> 16);
        tcp[6] = (unsigned char)(seq >> 8);
        tcp[7] = (unsigned char)seq;
        tcp[16] = tcp[17] = 0;
        unsigned tcp_len = (unsigned)(thlen + clen);
        uint64_t sum = csum_add(tcp, thlen + clen, pseudo + htons((uint16_t)tcp_len));
        csum_store(tcp + 16, sum, 0);
        if (v4) {
            put_be16(d + 2, (unsigned)ihl + tcp_len);
            put_be16(d + 4, (ident + index) & 0xFFFF);
            d[10] = d[11] = 0;
            csum_store(d + 10, csum_add(d, ihl, 0), 0);
        } else {
            put_be16(d + 4, tcp_len);
        }
        int r = PyList_Append(out, seg);
        Py_DECREF(seg);
        if (r < 0)
            return -1;
        offset = end;
    }
    return 0;
}

PyObject *vnet_segment(PyObject *module, PyObject *frame) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = vnet_segment_frame(view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

PyObject *vnet_segment_frame(const unsigned char *f, Py_ssize_t n) {
    PyObject *out = PyList_New(0);
    if (out == NULL || n <= VNET_HDR_LEN)
        return out;
    unsigned flags = f[0], gso = f[1] & ~GSO_ECN;
    unsigned gso_size, csum_start, csum_offset; /* host byte order (legacy header) */
    uint16_t u;
    memcpy(&u, f + 4, 2);
    gso_size = u;
    memcpy(&u, f + 6, 2);
    csum_start = u;
    memcpy(&u, f + 8, 2);
    csum_offset = u;
    const unsigned char *pkt = f + VNET_HDR_LEN;
    Py_ssize_t size = n - VNET_HDR_LEN;
    if (gso == GSO_NONE) {
        PyObject *one = PyBytes_FromStringAndSize((const char *)pkt, size);
        if (one == NULL)
            goto fail;
        if (flags & F_NEEDS_CSUM &&
            vnet_complete((unsigned char *)PyBytes_AS_STRING(one), size, csum_start,
                          csum_offset) < 0) {
            Py_DECREF(one);
            return out;
        }
        int r = PyList_Append(out, one);
        Py_DECREF(one);
        if (r < 0)
            goto fail;
    } else if ((gso == GSO_TCPV4 || gso == GSO_TCPV6) && gso_size) {
        if (segment_tcp(pkt, size, gso == GSO_TCPV4, gso_size, out) < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* --- coalesce: vpn/gro.coalesce in C ----------------------------------------------
 *
 * The same frames, byte for byte, as the Python (tests/shell/test_compiled_coalesce.py),
 * by the same rules (vpn/gro.py's docstring): the general path of gro._general,
 * gro._not_merged and gro.merge, one packet at a time.  Items (what is written, in
 * order) are chains of packet indices; the open runs are a small table searched by
 * flow key (addresses and ports: 12 bytes for IPv4, 36 for IPv6), as gro's dict. */

#define TCP_ACK 0x10
#define MAX_V4_PACKET 65535

typedef struct {
    int head, tail, count;
} Item;

typedef struct {
    int open, item;
    int key_len;
    const unsigned char *key, *options;
    int options_len;
    uint32_t next_seq;
    Py_ssize_t size, total, limit;
    unsigned char sig[8];
    uint32_t ip_a, ip_b;
} Run;

typedef struct {
    Item *items;
    int nitems;
    int *next; /* the next packet of the same item, -1 */
    Run *runs;
    int nruns, nopen;
} Coalescer;

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t be16(const unsigned char *p) { return (uint32_t)p[0] << 8 | p[1]; }

static Run *find_run(Coalescer *c, const unsigned char *key, int key_len) {
    for (int r = 0; r < c->nruns; r++) {
        Run *run = &c->runs[r];
        if (run->open && run->key_len == key_len && memcmp(run->key, key, (size_t)key_len) == 0)
            return run;
    }
    return NULL;
}

static void close_run(Coalescer *c, Run *run) {
    if (run != NULL && run->open) {
        run->open = 0;
        c->nopen--;
    }
}

static void close_key(Coalescer *c, const unsigned char *key, int key_len) {
    close_run(c, find_run(c, key, key_len));
}

static void close_all(Coalescer *c) {
    for (int r = 0; r < c->nruns; r++)
        c->runs[r].open = 0;
    c->nopen = 0;
}

/* A new item holding packet ``i``; its index. */
static int new_item(Coalescer *c, int i) {
    Item *it = &c->items[c->nitems];
    it->head = it->tail = i;
    it->count = 1;
    c->next[i] = -1;
    return c->nitems++;
}

static void item_append(Coalescer *c, int item, int i) {
    Item *it = &c->items[item];
    c->next[it->tail] = i;
    c->next[i] = -1;
    it->tail = i;
    it->count++;
}

/* gro._not_merged: written as it is; the run its flow may have is closed (all runs
 * when its flow cannot be told). */
static void not_merged(Coalescer *c, int i, const unsigned char *p, Py_ssize_t n) {
    new_item(c, i);
    if (!c->nopen)
        return;
    int version = n ? p[0] >> 4 : 0;
    if (version == 4 && n >= 20 && p[9] == TCP_PROTO) {
        Py_ssize_t ihl = (p[0] & 0x0F) * 4;
        if ((p[6] & 0x1F) || p[7] || n < ihl + 4) {
            close_all(c); /* a later fragment: no ports */
        } else {
            unsigned char key[12];
            memcpy(key, p + 12, 8);
            memcpy(key + 8, p + ihl, 4);
            close_key(c, key, 12);
        }
    } else if (version == 6 && n >= 44) {
        static const unsigned char ext[] = {0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254};
        if (p[6] == TCP_PROTO) {
            close_key(c, p + 8, 36);
        } else if (memchr(ext, p[6], sizeof ext) != NULL) {
            close_all(c);
        }
    }
}

/* gro._general for a TCP packet of the right family, length and no fragment. */
static void general(Coalescer *c, int i, const unsigned char *p, Py_ssize_t n, uint32_t a,
                    uint32_t b, const unsigned char *key, int key_len, uint32_t seq,
                    const unsigned char *sig, Py_ssize_t ihl, Py_ssize_t limit) {
    unsigned doff = sig[4], flags = sig[5];
    Py_ssize_t hl = ihl + (doff >> 4) * 4;
    Py_ssize_t payload = n - hl;
    if ((flags | TCP_PSH) != (TCP_ACK | TCP_PSH) || payload <= 0 || doff < 0x50 ||
        (doff & 0x0F)) {
        close_key(c, key, key_len);
        new_item(c, i);
        return;
    }
    Run *run = find_run(c, key, key_len);
    if (run == NULL && (flags & TCP_PSH)) {
        new_item(c, i);
        return;
    }
    const unsigned char *options = p + ihl + 20;
    int options_len = (int)(hl - ihl - 20);
    if (run != NULL && run->next_seq == seq && run->ip_a == a && run->ip_b == b &&
        run->options_len == options_len &&
        memcmp(run->options, options, (size_t)options_len) == 0 &&
        memcmp(run->sig, sig, 5) == 0 && memcmp(run->sig + 6, sig + 6, 2) == 0 &&
        (sig[5] == run->sig[5] || sig[5] == (run->sig[5] | TCP_PSH))) {
        Py_ssize_t total = run->total + payload;
        if (payload <= run->size && hl + total <= limit) {
            item_append(c, run->item, i);
            if (payload < run->size || (flags & TCP_PSH)) {
                close_run(c, run);
                return;
            }
            run->next_seq = seq + (uint32_t)payload;
            run->total = total;
            return;
        }
    }
    int item = new_item(c, i);
    if (flags & TCP_PSH) {
        close_key(c, key, key_len);
        return;
    }
    close_run(c, run); /* (replaced: its item stays where it is) */
    Run *fresh = &c->runs[c->nruns++];
    fresh->open = 1;
    c->nopen++;
    fresh->item = item;
    fresh->key = key;
    fresh->key_len = key_len;
    fresh->options = options;
    fresh->options_len = options_len;
    fresh->next_seq = seq + (uint32_t)payload;
    fresh->size = fresh->total = payload;
    fresh->limit = limit;
    memcpy(fresh->sig, sig, 8);
    fresh->ip_a = a;
    fresh->ip_b = b;
}

/* gro.merge: one frame for an item of >= 2 segments. */
static PyObject *merge_item(Coalescer *c, const Item *it, PyObject *const *pkts) {
    const unsigned char *head = (const unsigned char *)PyBytes_AS_STRING(pkts[it->head]);
    Py_ssize_t head_n = PyBytes_GET_SIZE(pkts[it->head]);
    int v4 = head[0] >> 4 == 4;
    Py_ssize_t ihl = v4 ? 20 : 40;
    Py_ssize_t hl = ihl + (head[ihl + 12] >> 4) * 4;
    Py_ssize_t size = head_n - hl;
    Py_ssize_t payload = 0;
    for (int i = it->head; i >= 0; i = c->next[i])
        payload += PyBytes_GET_SIZE(pkts[i]) - hl;
    unsigned tcp_len = (unsigned)(hl - ihl + payload);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + hl + payload);
    if (frame == NULL)
        return NULL;
    unsigned char *f = (unsigned char *)PyBytes_AS_STRING(frame);
    uint16_t h[4] = {(uint16_t)hl, (uint16_t)size, (uint16_t)ihl, 16};
    f[0] = F_NEEDS_CSUM;
    f[1] = v4 ? GSO_TCPV4 : GSO_TCPV6;
    memcpy(f + 2, h, sizeof h); /* hdr_len, gso_size, csum_start, csum_offset (host order) */
    unsigned char *d = f + VNET_HDR_LEN;
    memcpy(d, head, (size_t)hl);
    const unsigned char *last = (const unsigned char *)PyBytes_AS_STRING(pkts[it->tail]);
    d[ihl + 13] = last[ihl + 13]; /* ACK, or ACK|PSH from the last */
    uint64_t pseudo = csum_add(head + (v4 ? 12 : 8), v4 ? 8 : 32,
                               htons(TCP_PROTO) + htons((uint16_t)tcp_len));
    uint16_t ps = (uint16_t)(pseudo % 0xFFFF); /* vnet.pseudo_sum, not complemented */
    memcpy(d + ihl + 16, &ps, 2);
    if (v4) {
        put_be16(d + 2, 20 + tcp_len);
        d[10] = d[11] = 0;
        csum_store(d + 10, csum_add(d, 20, 0), 0);
    } else {
        put_be16(d + 4, tcp_len);
    }
    unsigned char *o = d + hl;
    for (int i = it->head; i >= 0; i = c->next[i]) {
        Py_ssize_t k = PyBytes_GET_SIZE(pkts[i]) - hl;
        memcpy(o, PyBytes_AS_STRING(pkts[i]) + hl, (size_t)k);
        o += k;
    }
    return frame;
}

PyObject *vnet_coalesce(PyObject *module, PyObject *packets) {
    (void)module;
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "coalesce() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(packets);
    PyObject *const *pkts = ((PyListObject *)packets)->ob_item;
    for (Py_ssize_t i = 0; i < count; i++)
        if (!PyBytes_Check(pkts[i])) {
            PyErr_SetString(PyExc_TypeError, "coalesce() takes a list of bytes");
            return NULL;
        }
    if (count > INT_MAX / 2) {
        PyErr_SetString(PyExc_OverflowError, "too many packets");
        return NULL;
    }
    Coalescer c = {0};
    size_t slots = count ? (size_t)count : 1;
    c.items = PyMem_Malloc(slots * sizeof(Item));
    c.next = PyMem_Malloc(slots * sizeof(int));
    c.runs = PyMem_Malloc(slots * sizeof(Run));
    PyObject *out = NULL;
    if (c.items == NULL || c.next == NULL || c.runs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < (int)count; i++) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(pkts[i]);
        Py_ssize_t n = PyBytes_GET_SIZE(pkts[i]);
        unsigned b0 = n ? p[0] : 0;
        if (b0 == 0x45 && n >= 40) {
            uint32_t b = be32(p + 6);
            if ((b & 0xFF) != TCP_PROTO || (b >> 16 & 0xBFFF) || be16(p + 2) != (uint32_t)n)
                not_merged(&c, i, p, n);
            else
                general(&c, i, p, n, be16(p), b, p + 12, 12, be32(p + 24), p + 28, 20,
                        MAX_V4_PACKET);
        } else if (b0 >> 4 == 6 && n >= 60) {
            uint32_t b = be16(p + 6);
            if (b >> 8 != TCP_PROTO || be16(p + 4) + 40 != (uint32_t)n)
                not_merged(&c, i, p, n);
            else
                general(&c, i, p, n, be32(p), b, p + 8, 36, be32(p + 44), p + 48, 40,
                        MAX_V4_PACKET + 40);
        } else {
            not_merged(&c, i, p, n);
        }
    }
    out = PyList_New(c.nitems);
    if (out == NULL)
        goto done;
    for (int k = 0; k < c.nitems; k++) {
        const Item *it = &c.items[k];
        PyObject *frame;
        if (it->count == 1) {
            Py_ssize_t n = PyBytes_GET_SIZE(pkts[it->head]);
            frame = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + n);
            if (frame != NULL) {
                char *f = PyBytes_AS_STRING(frame);
                memset(f, 0, VNET_HDR_LEN);
                memcpy(f + VNET_HDR_LEN, PyBytes_AS_STRING(pkts[it->head]), (size_t)n);
            }
        } else {
            frame = merge_item(&c, it, pkts);
        }
        if (frame == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, k, frame);
    }
done:
    PyMem_Free(c.items);
    PyMem_Free(c.next);
    PyMem_Free(c.runs);
    return out;
}
