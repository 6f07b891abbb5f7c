/* dtlsvpn.daemon._lane: the optional compiled lone-packet lane (issue 10, idle latency).
 *
 * What it is: ``Lane.poll(timeout)`` stands in for the daemon loop's ``epoll.poll``.
 * It waits on the loop's own epoll descriptor and, while the only thing that happens
 * is a lone data packet of an armed flow, handles it here, in C, and waits again:
 * a TUN packet is sealed into one DTLS 1.2 record and sent, a datagram that is one
 * protected data record of the flow's read epoch is opened and its packet written to
 * the TUN.  Anything else ends the poll: the event is returned as epoll.poll would
 * have returned it, and a packet or datagram already read is left in the device's
 * ``pending`` list, where the device's batch read finds it first.  The Python data
 * path then does exactly what it does without this module.
 *
 * What it decides nothing about: everything that is policy or state beyond the record
 * layer stays Python.  ``dtlsvpn/daemon/lane.py`` arms a flow only when the Python
 * lone lane would do no more than this file does for it (see its docstring); the
 * checks here repeat the Python lanes' for each packet, and a packet that fails any
 * of them (not IP, multicast, to the peer's underlay address, a TCP SYN to clamp, over
 * the peer's limit, a source outside the peer's prefixes, a replay, a forgery, a
 * keepalive, a record budget reached) is handed back untouched: no sequence number
 * taken, no window moved, no counter changed.  Counters, sequence numbers and replay
 * windows are the Python objects' own: read when a poll starts, written back when it
 * ends, so nothing in Python ever sees a stale value (Python does not run between,
 * but for a flow's ``wake`` hook: before it is called what the poll did is written
 * back, after it everything is read again, and the poll then ends; see wake_up).
 *
 * Wire format: RFC 6347 §4.1 records, RFC 5288 §3 (AES-GCM explicit nonce), RFC 7905
 * §2 (ChaCha20-Poly1305 nonce), RFC 5246 §6.2.3.3 and RFC 9146 §5 (additional data);
 * dtls/fastpath.py has the same in Python and the unit tests hold the two to the same
 * bytes.  Crypto is OpenSSL's libcrypto, which ``cryptography`` wraps as well.
 *
 * The same module carries the TUN's offloads in C (``_vnet.c``: ``segment`` for TSO
 * reads, ``coalesce`` for writes; daemon/tun.py); a TSO read that reaches this lane is
 * completed (a lone NEEDS_CSUM packet) or cut and handed back (a super-packet) here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "_vnet.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define MAX_FLOWS 8
#define MAX_PREFIXES 16
#define VNET_HDR_LEN 10
#define MAX_PACKET 65535
#define MAX_PLAINTEXT 16384
#define MAX_CIPHERTEXT (16384 + 2048)
#define TAG_LEN 16
#define CT_APP 23
#define CT_CID 25
#define WINDOW_SIZE 128
#define SEQ_MASK ((1ULL << 48) - 1)
/* RFC 9146 §5 additional data with the longest CID (255 bytes; RFC 5246's is 13) */
#define MAX_AAD (8 + 3 + 2 + 8 + 255 + 2)

enum { HANDLED = 0, HANDBACK = 1, FAILED = -1 };

typedef struct {
    int family; /* 4 or 6 */
    int len;    /* prefix length */
    unsigned char addr[16];
} Prefix;

typedef struct {
    EVP_CIPHER_CTX *ctx;
    int gcm;
    unsigned char nonce_high[4];
    uint64_t nonce_xor;
} Aead;

typedef struct {
    int used;
    /* the Python objects whose state this flow carries (owned references) */
    PyObject *peer, *stats, *assoc, *fast, *ws, *window;
    /* called once, before the first packet sealed here (Peer.on_send: the TCP
       fallback's checker woken by a send); see wake_up */
    PyObject *wake;
    /* routing: the peer's exclusive prefixes, its underlay address */
    int nprefix;
    Prefix prefix[MAX_PREFIXES];
    int under_len;
    unsigned char under[16];
    int mss;   /* nonzero: TCP SYNs go to Python (clamped there) */
    long limit; /* inner packets above it go to Python (0: none) */
    /* transmit */
    int tx;
    Aead seal;
    unsigned char tx_type;
    uint16_t tx_epoch;
    unsigned char tx_cid[255];
    int tx_cid_len;
    uint64_t next_seq, tx_until; /* sealing stops at tx_until (budget, 2^48) */
    struct sockaddr_storage dst;
    socklen_t dst_len; /* 0: the connected socket's peer */
    /* receive */
    int rx;
    Aead open;
    unsigned char rx_head[3];
    uint16_t rx_epoch;
    unsigned char rx_cid[255];
    int rx_cid_len;
    uint64_t rx_until;
    struct sockaddr_storage src;
    socklen_t src_len; /* 0: any (the client's connected socket) */
    int64_t top;
    uint64_t bits_lo, bits_hi;
    /* what this poll did, written back at its end */
    int dirty;
    long long d_tx_records, d_tx_packets, d_tx_bytes;
    long long d_rx_records, d_rx_bytes, d_rx_packets, d_rx_inner, d_tun_write;
    double last_rx;
    double last_used; /* when it was armed, or C last sealed or opened a packet of it */
    int advanced;
} Flow;

typedef struct {
    PyObject_HEAD
    int epfd;
    int tun_fd, tun_vnet;
    PyObject *tun_pending; /* list: packets read here and left to Python */
    PyObject *tun_counters; /* the Tun's counters (tso_reads, tso_malformed) */
    int udp_fd, udp_connected;
    PyObject *udp_pending; /* list: datagrams (client) or (datagram, addr) (server) */
    PyObject *failures;    /* list: (flow index, errno) of sends that failed */
    int stop;              /* a wake hook ran: the loop's timers may have moved */
    Flow flows[MAX_FLOWS];
    unsigned long long tx_packets, rx_packets, handed_back, polls;
    unsigned char buf[VNET_HDR_LEN + MAX_PACKET + 64];
    unsigned char out[VNET_HDR_LEN + MAX_PACKET + 512];
} Lane;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- the AEAD ---------------------------------------------------------------------- */

static const EVP_CIPHER *cipher_for(int gcm, Py_ssize_t keylen) {
    if (!gcm)
        return keylen == 32 ? EVP_chacha20_poly1305() : NULL;
    if (keylen == 16)
        return EVP_aes_128_gcm();
    if (keylen == 32)
        return EVP_aes_256_gcm();
    return NULL;
}

static void aead_free(Aead *a) {
    if (a->ctx != NULL)
        EVP_CIPHER_CTX_free(a->ctx);
    a->ctx = NULL;
}

static int aead_init(Aead *a, int encrypt, const unsigned char *key, Py_ssize_t keylen,
                     int gcm, const unsigned char *nonce_high, Py_ssize_t nhlen,
                     uint64_t nonce_xor) {
    const EVP_CIPHER *cipher = cipher_for(gcm, keylen);
    if (cipher == NULL || nhlen != 4) {
        PyErr_SetString(PyExc_ValueError, "unsupported AEAD key or nonce");
        return -1;
    }
    aead_free(a);
    a->ctx = EVP_CIPHER_CTX_new();
    if (a->ctx == NULL ||
        EVP_CipherInit_ex(a->ctx, cipher, NULL, key, NULL, encrypt) != 1) {
        aead_free(a);
        PyErr_SetString(PyExc_RuntimeError, "EVP_CipherInit_ex failed");
        return -1;
    }
    a->gcm = gcm;
    memcpy(a->nonce_high, nonce_high, 4);
    a->nonce_xor = nonce_xor;
    return 0;
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The additional data (RFC 5246 §6.2.3.3; RFC 9146 §5 with a CID) into ``aad``. */
static int build_aad(unsigned char *aad, uint64_t es, const unsigned char *cid, int cid_len,
                     int inner_len) {
    int n = 0;
    if (cid_len) {
        memset(aad, 0xff, 8);
        aad[8] = CT_CID;
        aad[9] = (unsigned char)cid_len;
        aad[10] = CT_CID;
        aad[11] = 0xfe;
        aad[12] = 0xfd;
        put_u64(aad + 13, es);
        memcpy(aad + 21, cid, (size_t)cid_len);
        n = 21 + cid_len;
    } else {
        put_u64(aad, es);
        aad[8] = CT_APP;
        aad[9] = 0xfe;
        aad[10] = 0xfd;
        n = 11;
    }
    aad[n] = (unsigned char)(inner_len >> 8);
    aad[n + 1] = (unsigned char)inner_len;
    return n + 2;
}

static void build_nonce(const Aead *a, unsigned char *nonce, uint64_t es) {
    memcpy(nonce, a->nonce_high, 4);
    put_u64(nonce + 4, a->gcm ? es : es ^ a->nonce_xor);
}

/* Seal ``plain`` (``len`` bytes, already the inner plaintext) into ``dst`` (ciphertext
 * then tag); 0 on success. */
static int aead_seal(Aead *a, uint64_t es, const unsigned char *aad, int aad_len,
                     const unsigned char *plain, int len, unsigned char *dst) {
    unsigned char nonce[12];
    int outl = 0;
    build_nonce(a, nonce, es);
    if (EVP_EncryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(a->ctx, NULL, &outl, aad, aad_len) != 1 ||
        EVP_EncryptUpdate(a->ctx, dst, &outl, plain, len) != 1 ||
        EVP_EncryptFinal_ex(a->ctx, dst + outl, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, dst + len) != 1)
        return -1;
    return 0;
}

/* Open ``len`` bytes of ciphertext + tag at ``src`` into ``dst``; 0 when it
 * authenticates. */
static int aead_open(Aead *a, uint64_t es, const unsigned char *aad, int aad_len,
                     const unsigned char *src, int len, unsigned char *dst) {
    unsigned char nonce[12];
    unsigned char tag[TAG_LEN];
    int outl = 0, body = len - TAG_LEN;
    if (body < 0)
        return -1;
    memcpy(tag, src + body, TAG_LEN);
    build_nonce(a, nonce, es);
    if (EVP_DecryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_DecryptUpdate(a->ctx, NULL, &outl, aad, aad_len) != 1 ||
        EVP_DecryptUpdate(a->ctx, dst, &outl, src, body) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) != 1 ||
        EVP_DecryptFinal_ex(a->ctx, dst + outl, &outl) != 1)
        return -1;
    return 0;
}

/* --- packets --------------------------------------------------------------------- */

static int prefix_match(const Prefix *p, int family, const unsigned char *addr) {
    if (p->family != family)
        return 0;
    int full = p->len / 8, rest = p->len % 8;
    if (memcmp(p->addr, addr, (size_t)full) != 0)
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((p->addr[full] & mask) != (addr[full] & mask))
            return 0;
    }
    return 1;
}

static int in_prefixes(const Flow *f, int family, const unsigned char *addr) {
    for (int i = 0; i < f->nprefix; i++)
        if (prefix_match(&f->prefix[i], family, addr))
            return 1;
    return 0;
}

/* The version (4, 6) and the offset of the destination (``dst``) or source address;
 * 0 when not an IP packet the lanes take. */
static int ip_version(const unsigned char *pkt, Py_ssize_t n) {
    int v = n ? pkt[0] >> 4 : 0;
    if (v == 4 && n >= 20)
        return 4;
    if (v == 6 && n >= 40)
        return 6;
    return 0;
}

/* mss.clamp_lone's pre-filter: 1 when the packet may be a TCP SYN to clamp. */
static int may_clamp(const unsigned char *pkt, Py_ssize_t n) {
    if (n < 40)
        return 0;
    if (pkt[0] == 0x45)
        return pkt[9] == 6 && (pkt[33] & 0x02);
    if (pkt[0] >> 4 == 6)
        return n >= 60 && pkt[6] == 6 && (pkt[53] & 0x02);
    return 1;
}

static int sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                          const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0 &&
               x->sin6_scope_id == y->sin6_scope_id;
    }
    (void)alen;
    return 0;
}

/* --- loading and writing back the Python state ------------------------------------- */

static int get_ll(PyObject *obj, const char *name, long long *out) {
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int add_ll(PyObject *obj, const char *name, long long delta) {
    long long v;
    if (delta == 0)
        return 0;
    if (get_ll(obj, name, &v) < 0)
        return -1;
    PyObject *n = PyLong_FromLongLong(v + delta);
    if (n == NULL)
        return -1;
    int r = PyObject_SetAttrString(obj, name, n);
    Py_DECREF(n);
    return r;
}

static int load_flow(Flow *f) {
    f->dirty = 0;
    f->d_tx_records = f->d_tx_packets = f->d_tx_bytes = 0;
    f->d_rx_records = f->d_rx_bytes = f->d_rx_packets = f->d_rx_inner = f->d_tun_write = 0;
    f->advanced = 0;
    if (f->tx) {
        long long seq;
        if (get_ll(f->ws, "next_seq", &seq) < 0)
            return -1;
        f->next_seq = (uint64_t)seq;
    }
    if (f->rx) {
        long long top;
        if (get_ll(f->window, "top", &top) < 0)
            return -1;
        PyObject *bits = PyObject_GetAttrString(f->window, "bits");
        if (bits == NULL)
            return -1;
        f->bits_lo = PyLong_AsUnsignedLongLongMask(bits);
        PyObject *sixty_four = PyLong_FromLong(64);
        PyObject *high = sixty_four ? PyNumber_Rshift(bits, sixty_four) : NULL;
        Py_XDECREF(sixty_four);
        Py_DECREF(bits);
        if (high == NULL)
            return -1;
        f->bits_hi = PyLong_AsUnsignedLongLongMask(high);
        Py_DECREF(high);
        if (PyErr_Occurred())
            return -1;
        f->top = top;
    }
    return 0;
}

static int set_attr(PyObject *obj, const char *name, PyObject *value) {
    if (value == NULL)
        return -1;
    int r = PyObject_SetAttrString(obj, name, value);
    Py_DECREF(value);
    return r;
}

static int write_back(Flow *f) {
    if (!f->dirty)
        return 0;
    f->dirty = 0;
    if (f->d_tx_records) {
        if (set_attr(f->ws, "next_seq", PyLong_FromUnsignedLongLong(f->next_seq)) < 0 ||
            add_ll(f->stats, "tx_records", f->d_tx_records) < 0)
            return -1;
    }
    if (add_ll(f->peer, "tx_packets", f->d_tx_packets) < 0 ||
        add_ll(f->peer, "tx_bytes", f->d_tx_bytes) < 0)
        return -1;
    if (f->d_rx_records) {
        PyObject *lo = PyLong_FromUnsignedLongLong(f->bits_lo);
        PyObject *hi = PyLong_FromUnsignedLongLong(f->bits_hi);
        PyObject *sh = PyLong_FromLong(64);
        PyObject *hs = (hi && sh) ? PyNumber_Lshift(hi, sh) : NULL;
        PyObject *bits = (hs && lo) ? PyNumber_Or(hs, lo) : NULL;
        Py_XDECREF(lo);
        Py_XDECREF(hi);
        Py_XDECREF(sh);
        Py_XDECREF(hs);
        if (set_attr(f->window, "bits", bits) < 0 ||
            set_attr(f->window, "top", PyLong_FromLongLong(f->top)) < 0 ||
            add_ll(f->stats, "rx_records", f->d_rx_records) < 0 ||
            add_ll(f->stats, "rx_bytes", f->d_rx_bytes) < 0 ||
            set_attr(f->assoc, "_last_rx", PyFloat_FromDouble(f->last_rx)) < 0 ||
            set_attr(f->assoc, "advanced", PyBool_FromLong(f->advanced)) < 0 ||
            set_attr(f->fast, "advanced", PyBool_FromLong(f->advanced)) < 0 ||
            set_attr(f->fast, "opened", PyBool_FromLong(1)) < 0)
            return -1;
    }
    if (add_ll(f->peer, "rx_packets", f->d_rx_packets) < 0 ||
        add_ll(f->peer, "rx_bytes", f->d_rx_inner) < 0)
        return -1;
    if (f->d_tun_write) {
        PyObject *r = PyObject_CallMethod(f->peer, "drop", "sL", "tun_write",
                                          (long long)f->d_tun_write);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int load_all(Lane *self) {
    for (int i = 0; i < MAX_FLOWS; i++)
        if (self->flows[i].used && load_flow(&self->flows[i]) < 0)
            return -1;
    return 0;
}

static int write_back_all(Lane *self) {
    int r = 0;
    for (int i = 0; i < MAX_FLOWS; i++)
        if (self->flows[i].used && write_back(&self->flows[i]) < 0)
            r = -1;
    return r;
}

/* --- the lanes ------------------------------------------------------------------ */

/* Whether another packet waits on ``fd`` (a burst: the batch lanes take it). */
static int more_waiting(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static int push_back(PyObject *list, PyObject *item) {
    if (item == NULL)
        return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

/* The flow's wake hook, where the Python lane calls it: before the packet is sealed.
 * What this poll did so far is written back first, so the hook sees the peer as
 * Python would (without this packet), and read again after, because the hook may
 * have sent a record itself (a heartbeat probe takes the next sequence number).  The
 * poll then ends: the hook may have moved the loop's timers.  1: seal the packet; 0:
 * the hook returned False (what the flow was armed from changed: hand it back); -1. */
static int wake_up(Lane *self, Flow *f, double now) {
    PyObject *wake = f->wake;
    f->wake = NULL;
    self->stop = 1;
    if (write_back_all(self) < 0) {
        Py_DECREF(wake);
        return -1;
    }
    PyObject *at = PyFloat_FromDouble(now);
    PyObject *res = at == NULL ? NULL : PyObject_CallOneArg(wake, at);
    Py_XDECREF(at);
    Py_DECREF(wake);
    if (res == NULL)
        return -1;
    int keep = res != Py_False;
    Py_DECREF(res);
    return load_all(self) < 0 ? -1 : keep;
}

/* The bytes of a record carrying ``n`` bytes (RFC 6347 §4.1 header, GCM's explicit
 * nonce, RFC 9146's inner type with a CID, the tag). */
static Py_ssize_t record_size(const Aead *a, int cid_len, Py_ssize_t n) {
    return 13 + cid_len + (a->gcm ? 8 : 0) + n + (cid_len ? 1 : 0) + TAG_LEN;
}

/* One protected record of content ``type`` at ``es`` (epoch << 48 | sequence number)
 * carrying ``plain[:n]`` into ``o`` (``record_size`` bytes): a tls12_cid record with the
 * inner type when ``cid_len`` (RFC 9146 §4), else RFC 6347's.  Its size, or -1 when the
 * AEAD failed.  ``plain`` may not overlap ``o``. */
static int seal_record(Aead *a, uint64_t es, unsigned char type, const unsigned char *cid,
                       int cid_len, const unsigned char *plain, Py_ssize_t n,
                       unsigned char *o) {
    int explicit = a->gcm ? 8 : 0;
    int hlen = 13 + cid_len;
    int inner = (int)n + (cid_len ? 1 : 0);
    int length = explicit + inner + TAG_LEN;
    o[0] = cid_len ? CT_CID : type;
    o[1] = 0xfe;
    o[2] = 0xfd;
    put_u64(o + 3, es);
    memcpy(o + 11, cid, (size_t)cid_len);
    o[11 + cid_len] = (unsigned char)(length >> 8);
    o[12 + cid_len] = (unsigned char)length;
    if (explicit)
        put_u64(o + hlen, es);
    unsigned char *body = o + hlen + explicit;
    if (cid_len) { /* DTLSInnerPlaintext: content || real type, no padding */
        memcpy(body, plain, (size_t)n);
        body[n] = type;
        plain = body;
    }
    unsigned char aad[MAX_AAD];
    int aad_len = build_aad(aad, es, cid, cid_len, inner);
    if (aead_seal(a, es, aad, aad_len, plain, inner, body) != 0)
        return -1;
    return hlen + length;
}

/* A packet read from the TUN (``pkt``, ``n`` bytes): sealed and sent, or HANDBACK. */
static int seal_out(Lane *self, const unsigned char *pkt, Py_ssize_t n, double now) {
    int v = ip_version(pkt, n);
    if (!v || n > MAX_PLAINTEXT)
        return HANDBACK;
    const unsigned char *dst = pkt + (v == 4 ? 16 : 24);
    int alen = v == 4 ? 4 : 16;
    if (v == 4 ? (pkt[16] >= 224 && pkt[16] < 240) : pkt[24] == 0xff)
        return HANDBACK; /* multicast: the router counts it */
    Flow *f = NULL;
    for (int i = 0; i < MAX_FLOWS; i++) {
        Flow *g = &self->flows[i];
        if (g->used && g->tx && (g->dst_len == 0 || in_prefixes(g, v, dst))) {
            f = g;
            break;
        }
    }
    if (f == NULL)
        return HANDBACK;
    if (f->under_len == alen && memcmp(f->under, dst, (size_t)alen) == 0)
        return HANDBACK; /* recursive routing: counted there */
    if ((f->mss && may_clamp(pkt, n)) || (f->limit && n > f->limit) ||
        f->next_seq >= f->tx_until)
        return HANDBACK;
    if (f->wake != NULL) {
        int keep = wake_up(self, f, now);
        if (keep < 0)
            return FAILED;
        if (!keep || f->next_seq >= f->tx_until) /* (a record the hook sent: reloaded) */
            return HANDBACK;
    }
    uint64_t es = (uint64_t)f->tx_epoch << 48 | f->next_seq;
    unsigned char *o = self->out;
    int size = seal_record(&f->seal, es, f->tx_type, f->tx_cid, f->tx_cid_len, pkt, n, o);
    if (size < 0) {
        PyErr_SetString(PyExc_RuntimeError, "AEAD seal failed");
        return FAILED;
    }
    f->next_seq++;
    f->dirty = 1;
    f->d_tx_records++;
    f->d_tx_bytes += n;
    ssize_t sent;
    if (f->dst_len)
        sent = sendto(self->udp_fd, o, (size_t)size, 0, (const struct sockaddr *)&f->dst,
                      f->dst_len);
    else
        sent = send(self->udp_fd, o, (size_t)size, 0);
    if (sent < 0) {
        PyObject *item = Py_BuildValue("(ii)", (int)(f - self->flows), errno);
        return push_back(self->failures, item) < 0 ? FAILED : HANDLED;
    }
    f->d_tx_packets++;
    f->last_used = now;
    self->tx_packets++;
    return HANDLED;
}

/* A TUN read with TSO offered (Tun.tso) that is not a finished packet: a super-packet
 * is cut into its segments, which go back to Python (a burst: the batch lanes' work);
 * a NEEDS_CSUM packet gets its checksum completed in place and goes on.  HANDLED (the
 * packet is ready) or HANDBACK; one that cannot be cut is dropped and counted as
 * Tun._take counts it, and handed back with nothing in ``pending``, so that Python's
 * read sees the count and stops TSO (Tun._give_up_tso). */
static int offloaded_read(Lane *self, ssize_t r) {
    unsigned char *b = self->buf;
    if (b[1]) {
        PyObject *segs = vnet_segment_frame(b, r);
        if (segs == NULL)
            return FAILED;
        Py_ssize_t k = PyList_GET_SIZE(segs);
        int rc = add_ll(self->tun_counters, k ? "tso_reads" : "tso_malformed", 1);
        if (rc == 0)
            rc = PyList_SetSlice(self->tun_pending, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, segs);
        Py_DECREF(segs);
        if (rc < 0)
            return FAILED;
        self->handed_back++;
        return HANDBACK;
    }
    uint16_t start, offset; /* host byte order (the legacy virtio-net header) */
    memcpy(&start, b + 6, 2);
    memcpy(&offset, b + 8, 2);
    if (vnet_complete(b + VNET_HDR_LEN, r - VNET_HDR_LEN, start, offset) < 0) {
        self->handed_back++;
        return add_ll(self->tun_counters, "tso_malformed", 1) < 0 ? FAILED : HANDBACK;
    }
    return HANDLED;
}

static int on_tun(Lane *self, double now) {
    int cut = self->tun_vnet ? VNET_HDR_LEN : 0;
    ssize_t r = read(self->tun_fd, self->buf, sizeof self->buf - 64);
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? HANDLED : HANDBACK;
    if (cut && r > VNET_HDR_LEN && (self->buf[0] | self->buf[1])) {
        int got = offloaded_read(self, r);
        if (got != HANDLED)
            return got;
    }
    const unsigned char *pkt = self->buf + cut;
    Py_ssize_t n = r - cut;
    if (n < 0)
        n = 0;
    int verdict = more_waiting(self->tun_fd) ? HANDBACK : seal_out(self, pkt, n, now);
    if (verdict == HANDBACK) {
        self->handed_back++;
        if (push_back(self->tun_pending,
                      PyBytes_FromStringAndSize((const char *)pkt, n)) < 0)
            return FAILED;
        return HANDBACK;
    }
    return verdict;
}

/* One datagram from the peer of ``f``: opened and written to the TUN, or HANDBACK. */
static int open_in(Lane *self, Flow *f, const unsigned char *d, Py_ssize_t size, double now) {
    int cid = f->rx_cid_len, explicit = f->open.gcm ? 8 : 0;
    int hlen = 13 + cid;
    if (size < hlen + explicit + TAG_LEN || size > hlen + MAX_CIPHERTEXT)
        return HANDBACK;
    if (memcmp(d, f->rx_head, 3) != 0 || (((uint16_t)d[3] << 8) | d[4]) != f->rx_epoch)
        return HANDBACK;
    if (memcmp(d + 11, f->rx_cid, (size_t)cid) != 0 ||
        (((int)d[11 + cid] << 8) | d[12 + cid]) != size - hlen)
        return HANDBACK;
    uint64_t es = get_u64(d + 3);
    uint64_t seq = es & SEQ_MASK;
    if (seq >= f->rx_until)
        return HANDBACK;
    if (f->top >= 0 && seq <= (uint64_t)f->top) {
        uint64_t off = (uint64_t)f->top - seq;
        if (off >= WINDOW_SIZE)
            return HANDBACK;
        uint64_t bit = off < 64 ? (f->bits_lo >> off) & 1 : (f->bits_hi >> (off - 64)) & 1;
        if (bit)
            return HANDBACK; /* a replay: Python counts it */
    }
    Aead *a = &f->open;
    int ct_len = (int)size - hlen - explicit;
    int inner = ct_len - TAG_LEN;
    unsigned char aad[MAX_AAD];
    int aad_len = build_aad(aad, es, f->rx_cid, cid, inner);
    unsigned char *plain = self->out + VNET_HDR_LEN;
    /* GCM: the record's explicit nonce, the peer's to choose (RFC 5288 §3) */
    uint64_t nonce_part = a->gcm ? get_u64(d + hlen) : es;
    if (aead_open(a, nonce_part, aad, aad_len, d + hlen + explicit, ct_len, plain) != 0)
        return HANDBACK; /* a forgery: Python counts it */
    int n = inner;
    if (cid) {
        if (n < 1 || plain[n - 1] != CT_APP)
            return HANDBACK; /* a keepalive or padding */
        n--;
    }
    int v = ip_version(plain, n);
    if (!v || !in_prefixes(f, v, plain + (v == 4 ? 12 : 8)) || (f->mss && may_clamp(plain, n)))
        return HANDBACK;
    /* accepted: the window moves (after authentication, RFC 6347 §4.1.2.6) */
    if (f->top < 0 || seq > (uint64_t)f->top) {
        uint64_t shift = f->top < 0 ? WINDOW_SIZE : seq - (uint64_t)f->top;
        if (shift >= WINDOW_SIZE) {
            f->bits_lo = 1;
            f->bits_hi = 0;
        } else if (shift >= 64) {
            f->bits_hi = f->bits_lo << (shift - 64);
            f->bits_lo = 1;
        } else {
            f->bits_hi = (f->bits_hi << shift) | (f->bits_lo >> (64 - shift));
            f->bits_lo = (f->bits_lo << shift) | 1;
        }
        f->top = (int64_t)seq;
        f->advanced = 1;
    } else {
        uint64_t off = (uint64_t)f->top - seq;
        if (off < 64)
            f->bits_lo |= 1ULL << off;
        else
            f->bits_hi |= 1ULL << (off - 64);
        f->advanced = 0;
    }
    f->dirty = 1;
    f->d_rx_records++;
    f->d_rx_bytes += size;
    f->d_rx_packets++;
    f->d_rx_inner += n;
    f->last_rx = f->last_used = now;
    self->rx_packets++;
    const unsigned char *frame = plain;
    size_t flen = (size_t)n;
    if (self->tun_vnet) {
        memset(self->out, 0, VNET_HDR_LEN);
        frame = self->out;
        flen += VNET_HDR_LEN;
    }
    if (write(self->tun_fd, frame, flen) < 0)
        f->d_tun_write++;
    return HANDLED;
}

static PyObject *py_addr(const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)ss;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(s->sin_port));
    }
    const struct sockaddr_in6 *s = (const void *)ss;
    inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
    if (s->sin6_scope_id) {
        char ifname[IF_NAMESIZE];
        size_t at = strlen(host);
        if (if_indextoname(s->sin6_scope_id, ifname) != NULL)
            snprintf(host + at, sizeof host - at, "%%%s", ifname);
        else
            snprintf(host + at, sizeof host - at, "%%%u", s->sin6_scope_id);
    }
    return Py_BuildValue("(siII)", host, ntohs(s->sin6_port), ntohl(s->sin6_flowinfo),
                         s->sin6_scope_id);
}

static int on_udp(Lane *self, double now) {
    struct sockaddr_storage from;
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = self->buf, .iov_len = MAX_PACKET + 1};
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                         .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t r = recvmsg(self->udp_fd, &msg, 0);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return HANDLED;
        /* A queued ICMP error (refused, unreachable): the Python read reports it. */
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno));
        self->handed_back++;
        return push_back(self->udp_pending, exc) < 0 ? FAILED : HANDBACK;
    }
    int gro = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO)
            gro = 1;
    int verdict = HANDBACK;
    if (!gro && !(msg.msg_flags & MSG_TRUNC) && !more_waiting(self->udp_fd)) {
        for (int i = 0; i < MAX_FLOWS; i++) {
            Flow *f = &self->flows[i];
            if (f->used && f->rx &&
                (f->src_len == 0 || sockaddr_equal(&f->src, f->src_len, &from))) {
                verdict = open_in(self, f, self->buf, r, now);
                break;
            }
        }
    }
    if (verdict != HANDBACK)
        return verdict;
    self->handed_back++;
    PyObject *data = PyBytes_FromStringAndSize((const char *)self->buf, r);
    if (data == NULL)
        return FAILED;
    if (gro) { /* a coalesced buffer: the port splits it (and counts it) */
        int seg = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO)
                memcpy(&seg, CMSG_DATA(c), sizeof seg);
        PyObject *addr = self->udp_connected ? Py_None : py_addr(&from);
        if (addr == NULL) {
            Py_DECREF(data);
            return FAILED;
        }
        if (self->udp_connected)
            Py_INCREF(Py_None);
        PyObject *item = Py_BuildValue("(NNi)", data, addr, seg);
        return push_back(self->udp_pending, item) < 0 ? FAILED : HANDBACK;
    }
    if (self->udp_connected)
        return push_back(self->udp_pending, data) < 0 ? FAILED : HANDBACK;
    PyObject *addr = py_addr(&from);
    if (addr == NULL) {
        Py_DECREF(data);
        return FAILED;
    }
    return push_back(self->udp_pending, Py_BuildValue("(NN)", data, addr)) < 0 ? FAILED
                                                                             : HANDBACK;
}

/* --- the Python type ---------------------------------------------------------------- */

static void clear_flow(Flow *f) {
    Py_CLEAR(f->peer);
    Py_CLEAR(f->stats);
    Py_CLEAR(f->assoc);
    Py_CLEAR(f->fast);
    Py_CLEAR(f->ws);
    Py_CLEAR(f->window);
    Py_CLEAR(f->wake);
    aead_free(&f->seal);
    aead_free(&f->open);
    memset(f, 0, sizeof *f);
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"epfd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kw, &self->epfd))
        return -1;
    self->tun_fd = self->udp_fd = -1;
    Py_XSETREF(self->failures, PyList_New(0));
    return self->failures == NULL ? -1 : 0;
}

static void Lane_dealloc(Lane *self) {
    for (int i = 0; i < MAX_FLOWS; i++)
        clear_flow(&self->flows[i]);
    Py_CLEAR(self->tun_pending);
    Py_CLEAR(self->tun_counters);
    Py_CLEAR(self->udp_pending);
    Py_CLEAR(self->failures);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_set_tun(Lane *self, PyObject *args) {
    int fd, vnet;
    PyObject *pending, *counters;
    if (!PyArg_ParseTuple(args, "ipO!O", &fd, &vnet, &PyList_Type, &pending, &counters))
        return NULL;
    self->tun_fd = fd;
    self->tun_vnet = vnet;
    Py_INCREF(pending);
    Py_XSETREF(self->tun_pending, pending);
    Py_INCREF(counters);
    Py_XSETREF(self->tun_counters, counters);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_udp(Lane *self, PyObject *args) {
    int fd, connected;
    PyObject *pending;
    if (!PyArg_ParseTuple(args, "ipO!", &fd, &connected, &PyList_Type, &pending))
        return NULL;
    self->udp_fd = fd;
    self->udp_connected = connected;
    Py_INCREF(pending);
    Py_XSETREF(self->udp_pending, pending);
    Py_RETURN_NONE;
}

static int parse_sockaddr(PyObject *spec, struct sockaddr_storage *ss, socklen_t *len) {
    const char *host;
    int port;
    memset(ss, 0, sizeof *ss);
    *len = 0;
    if (spec == Py_None)
        return 0;
    if (!PyArg_ParseTuple(spec, "si", &host, &port))
        return -1;
    struct sockaddr_in *s4 = (void *)ss;
    struct sockaddr_in6 *s6 = (void *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof *s6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
    return -1;
}

static int parse_prefixes(Flow *f, PyObject *list) {
    PyObject *seq = PySequence_Fast(list, "prefixes must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_PREFIXES) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many prefixes");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *addr;
        Py_ssize_t alen;
        int plen;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y#i", &addr, &alen, &plen) ||
            (alen != 4 && alen != 16) || plen < 0 || plen > alen * 8) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad prefix");
            return -1;
        }
        f->prefix[i].family = alen == 4 ? 4 : 6;
        f->prefix[i].len = plen;
        memcpy(f->prefix[i].addr, addr, (size_t)alen);
    }
    f->nprefix = (int)n;
    Py_DECREF(seq);
    return 0;
}

/* set_flow(index, peer, stats, assoc, prefixes, underlay, mss, limit,
 *          tx: None | (ws, key, gcm, nonce_high, nonce_xor, type, epoch, cid, until, dst),
 *          rx: None | (fast, window, key, gcm, nonce_high, nonce_xor, head, epoch, cid,
 *                      until, src),
 *          wake: None | callable(now) -> False to hand the packet back, else go on) */
static PyObject *Lane_set_flow(Lane *self, PyObject *args) {
    int index, mss;
    long limit;
    PyObject *peer, *stats, *assoc, *prefixes, *tx, *rx, *wake;
    const char *under;
    Py_ssize_t under_len;
    if (!PyArg_ParseTuple(args, "iOOOOy#ilOOO", &index, &peer, &stats, &assoc, &prefixes,
                          &under, &under_len, &mss, &limit, &tx, &rx, &wake))
        return NULL;
    if (index < 0 || index >= MAX_FLOWS || (under_len != 0 && under_len != 4 &&
                                            under_len != 16)) {
        PyErr_SetString(PyExc_ValueError, "bad flow index or underlay address");
        return NULL;
    }
    Flow *f = &self->flows[index];
    clear_flow(f);
    if (parse_prefixes(f, prefixes) < 0)
        goto fail;
    f->under_len = (int)under_len;
    memcpy(f->under, under, (size_t)under_len);
    f->mss = mss;
    f->limit = limit;
    if (tx != Py_None) {
        PyObject *ws, *dst;
        const char *key, *nh, *cid;
        Py_ssize_t keylen, nhlen, cidlen;
        int gcm, type, epoch;
        unsigned long long nx, until;
        if (!PyArg_ParseTuple(tx, "Oy#py#Kiiy#KO", &ws, &key, &keylen, &gcm, &nh, &nhlen, &nx,
                              &type, &epoch, &cid, &cidlen, &until, &dst))
            goto fail;
        if (cidlen > 255 || aead_init(&f->seal, 1, (const unsigned char *)key, keylen, gcm,
                                      (const unsigned char *)nh, nhlen, nx) < 0 ||
            parse_sockaddr(dst, &f->dst, &f->dst_len) < 0)
            goto fail;
        f->tx_type = (unsigned char)type;
        f->tx_epoch = (uint16_t)epoch;
        memcpy(f->tx_cid, cid, (size_t)cidlen);
        f->tx_cid_len = (int)cidlen;
        f->tx_until = until;
        Py_INCREF(ws);
        f->ws = ws;
        f->tx = 1;
    }
    if (rx != Py_None) {
        PyObject *fast, *window, *src;
        const char *key, *nh, *head, *cid;
        Py_ssize_t keylen, nhlen, headlen, cidlen;
        int gcm, epoch;
        unsigned long long nx, until;
        if (!PyArg_ParseTuple(rx, "OOy#py#Ky#iy#KO", &fast, &window, &key, &keylen, &gcm, &nh,
                              &nhlen, &nx, &head, &headlen, &epoch, &cid, &cidlen, &until,
                              &src))
            goto fail;
        if (headlen != 3 || cidlen > 255 ||
            aead_init(&f->open, 0, (const unsigned char *)key, keylen, gcm,
                      (const unsigned char *)nh, nhlen, nx) < 0 ||
            parse_sockaddr(src, &f->src, &f->src_len) < 0)
            goto fail;
        memcpy(f->rx_head, head, 3);
        f->rx_epoch = (uint16_t)epoch;
        memcpy(f->rx_cid, cid, (size_t)cidlen);
        f->rx_cid_len = (int)cidlen;
        f->rx_until = until;
        Py_INCREF(fast);
        f->fast = fast;
        Py_INCREF(window);
        f->window = window;
        f->rx = 1;
    }
    Py_INCREF(peer);
    f->peer = peer;
    Py_INCREF(stats);
    f->stats = stats;
    Py_INCREF(assoc);
    f->assoc = assoc;
    if (wake != Py_None) {
        Py_INCREF(wake);
        f->wake = wake;
    }
    f->used = 1;
    f->last_used = mono();
    Py_RETURN_NONE;
fail:
    clear_flow(f);
    return NULL;
}

/* The flow a Python index names; NULL with ValueError when there is none. */
static Flow *flow_at(Lane *self, PyObject *arg) {
    long index = PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= MAX_FLOWS) {
        PyErr_SetString(PyExc_ValueError, "bad flow index");
        return NULL;
    }
    return &self->flows[index];
}

static PyObject *Lane_clear_flow(Lane *self, PyObject *arg) {
    Flow *f = flow_at(self, arg);
    if (f == NULL)
        return NULL;
    clear_flow(f);
    Py_RETURN_NONE;
}

/* poll(timeout) -> [(fd, events)]: epoll.poll's result, minus what was handled here. */
static PyObject *Lane_poll(Lane *self, PyObject *arg) {
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *events = PyList_New(0);
    if (events == NULL || load_all(self) < 0) {
        Py_XDECREF(events);
        return NULL;
    }
    int armed_tx = 0, armed_rx = 0;
    for (int i = 0; i < MAX_FLOWS; i++) {
        armed_tx |= self->flows[i].used && self->flows[i].tx;
        armed_rx |= self->flows[i].used && self->flows[i].rx;
    }
    double deadline = timeout < 0 ? -1.0 : mono() + timeout;
    struct epoll_event evs[64];
    self->polls++;
    self->stop = 0;
    for (;;) {
        int ms = -1;
        if (timeout >= 0) {
            double left = deadline - mono();
            ms = left <= 0 ? 0 : (int)ceil(left * 1000.0);
        }
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(self->epfd, evs, 64, ms);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno != EINTR) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            if (PyErr_CheckSignals() < 0)
                goto fail;
            break; /* a signal: the loop handles it between iterations */
        }
        double now = mono();
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd, verdict = HANDBACK;
            if (evs[k].events == EPOLLIN && fd == self->tun_fd && armed_tx)
                verdict = on_tun(self, now);
            else if (evs[k].events == EPOLLIN && fd == self->udp_fd && armed_rx)
                verdict = on_udp(self, now);
            if (verdict == FAILED)
                goto fail;
            if (verdict == HANDBACK &&
                push_back(events, Py_BuildValue("(iI)", fd, evs[k].events)) < 0)
                goto fail;
        }
        if (n == 0 || ms == 0 || self->stop || PyList_GET_SIZE(events) ||
            PyList_GET_SIZE(self->failures))
            break;
    }
    if (write_back_all(self) < 0) {
        Py_DECREF(events);
        return NULL;
    }
    return events;
fail:
    write_back_all(self); /* what was done stays counted */
    Py_DECREF(events);
    return NULL;
}

static PyObject *Lane_take_failures(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = self->failures;
    self->failures = PyList_New(0);
    if (self->failures == NULL) {
        self->failures = out;
        return NULL;
    }
    return out;
}

static PyObject *Lane_last_used(Lane *self, PyObject *arg) {
    Flow *f = flow_at(self, arg);
    return f == NULL ? NULL : PyFloat_FromDouble(f->last_used);
}

static PyObject *Lane_counters(Lane *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsKsK}", "tx_packets", self->tx_packets, "rx_packets",
                         self->rx_packets, "handed_back", self->handed_back, "polls",
                         self->polls);
}

static PyMethodDef Lane_methods[] = {
    {"set_tun", (PyCFunction)Lane_set_tun, METH_VARARGS,
     "set_tun(fd, vnet, pending, counters): the TUN queue, the list its reads go back "
     "to and its TunCounters."},
    {"set_udp", (PyCFunction)Lane_set_udp, METH_VARARGS,
     "set_udp(fd, connected, pending): the UDP socket and its pending list."},
    {"set_flow", (PyCFunction)Lane_set_flow, METH_VARARGS, "Arm a flow (see lane.py)."},
    {"clear_flow", (PyCFunction)Lane_clear_flow, METH_O, "Disarm a flow."},
    {"poll", (PyCFunction)Lane_poll, METH_O,
     "poll(timeout) -> [(fd, events)]: epoll.poll minus what the lane handled."},
    {"take_failures", (PyCFunction)Lane_take_failures, METH_NOARGS,
     "The (flow, errno) of sends that failed since the last call."},
    {"last_used", (PyCFunction)Lane_last_used, METH_O,
     "last_used(index): when that flow was armed or C last carried a packet of it."},
    {"counters", (PyCFunction)Lane_counters, METH_NOARGS, "What the lane did."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dtlsvpn.daemon._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_doc = "The compiled lone-packet lane (see dtlsvpn/daemon/lane.py).",
};

/* --- Sealer: FastSeal.seal's batch loop in C (dtls/fastpath.py) -----------------
 *
 * One per data FastSeal of a write epoch, made from the same key and nonce material
 * (``DtlsConfig.record_sealer``, daemon/settings.py).  ``seal(payloads, es)`` returns
 * one application_data record (a tls12_cid record with a CID) per payload, numbered
 * from ``es`` (epoch << 48 | first sequence number): the bytes FastSeal's loop builds
 * (tests/shell/test_compiled_seal.py).  Python keeps the state: it reserves the
 * numbers and checks the limits before the call, as for its own loop. */

typedef struct {
    PyObject_HEAD
    Aead aead;
    unsigned char cid[255];
    int cid_len;
} Sealer;

static int Sealer_init(Sealer *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"key", "gcm", "nonce_high", "nonce_xor", "cid", NULL};
    const char *key, *nh, *cid;
    Py_ssize_t keylen, nhlen, cidlen;
    int gcm;
    unsigned long long nx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#py#Ky#", kw, &key, &keylen, &gcm, &nh,
                                     &nhlen, &nx, &cid, &cidlen))
        return -1;
    if (cidlen > 255) {
        PyErr_SetString(PyExc_ValueError, "connection ID longer than 255 bytes");
        return -1;
    }
    if (aead_init(&self->aead, 1, (const unsigned char *)key, keylen, gcm,
                  (const unsigned char *)nh, nhlen, nx) < 0)
        return -1;
    memcpy(self->cid, cid, (size_t)cidlen);
    self->cid_len = (int)cidlen;
    return 0;
}

static void Sealer_dealloc(Sealer *self) {
    aead_free(&self->aead);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Sealer_seal(Sealer *self, PyObject *args) {
    PyObject *payloads;
    unsigned long long first;
    if (!PyArg_ParseTuple(args, "O!K", &PyList_Type, &payloads, &first))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(payloads);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    uint64_t es = first;
    for (Py_ssize_t i = 0; i < count; i++, es++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) > MAX_PLAINTEXT) {
            PyErr_SetString(PyExc_ValueError, "payloads are bytes of at most 2^14");
            Py_DECREF(out);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        PyObject *rec =
            PyBytes_FromStringAndSize(NULL, record_size(&self->aead, self->cid_len, n));
        if (rec == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (seal_record(&self->aead, es, CT_APP, self->cid, self->cid_len,
                        (const unsigned char *)PyBytes_AS_STRING(item), n,
                        (unsigned char *)PyBytes_AS_STRING(rec)) < 0) {
            Py_DECREF(rec);
            Py_DECREF(out);
            PyErr_SetString(PyExc_RuntimeError, "AEAD seal failed");
            return NULL;
        }
        PyList_SET_ITEM(out, i, rec);
    }
    return out;
}

static PyMethodDef Sealer_methods[] = {
    {"seal", (PyCFunction)Sealer_seal, METH_VARARGS,
     "seal(payloads, es) -> list[bytes]: one data record per payload, numbered from es."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dtlsvpn.daemon._lane.Sealer",
    .tp_basicsize = sizeof(Sealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sealer_init,
    .tp_dealloc = (destructor)Sealer_dealloc,
    .tp_methods = Sealer_methods,
    .tp_doc = "FastSeal's batch loop in C (see dtlsvpn/dtls/fastpath.py).",
};

static PyMethodDef lane_functions[] = {
    {"segment", (PyCFunction)vnet_segment, METH_O,
     "segment(frame) -> list[bytes]: vnet.segment in C (TSO reads, daemon/tun.py)."},
    {"coalesce", (PyCFunction)vnet_coalesce, METH_O,
     "coalesce(packets) -> list[bytes]: gro.coalesce in C (TUN writes, daemon/tun.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lanemodule = {
    PyModuleDef_HEAD_INIT, "dtlsvpn.daemon._lane",
    "The optional compiled lone-packet lane (dtlsvpn/daemon/lane.py) and the TUN's "
    "offloads in C (_vnet.c: vnet.segment, gro.coalesce).", -1, lane_functions,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&SealerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lanemodule);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SealerType);
    if (PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType) < 0) {
        Py_DECREF(&SealerType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_FLOWS", MAX_FLOWS);
    PyModule_AddIntConstant(m, "MAX_PREFIXES", MAX_PREFIXES);
    return m;
}
