/* filterdns.serve._mmsg: batched UDP receive and send (Linux recvmmsg(2) / sendmmsg(2)).
 *
 * Two functions, no state visible to Python:
 *
 *   recv_batch(fd, n) -> [(data: bytes, addr: tuple), ...]
 *       Up to n (1..64) datagrams waiting on the non-blocking socket fd, in one system call.
 *       [] when none is waiting (EAGAIN). addr is what socket.recvfrom gives: (host, port)
 *       for AF_INET, (host, port, flowinfo, scope_id) for AF_INET6. A datagram longer than
 *       65535 octets cannot exist over UDP; each slot holds 65535.
 *
 *   send_batch(fd, replies, start=0) -> (sent, errno)
 *       Sends replies[start:] (a list of (data, addr)) with as few sendmmsg calls as it takes.
 *       Stops at EAGAIN/ENOBUFS (the socket buffer is full: the caller keeps the rest) and
 *       returns how many of replies[start:] were taken, with that errno (0 when all went out).
 *       A reply the kernel refuses for another reason (EINVAL, EACCES, ...) is skipped and
 *       counted as taken, like a failed sendto that a UDP server ignores.
 *
 *   serve(fd, n, respond) -> (received, unsent)
 *       One round of a UDP server: recv_batch(fd, n), then respond(data, addr) for each
 *       datagram in order (a reply is bytes, or None for no reply), then every reply sent as
 *       send_batch would, each to the very address its query came from (the received sockaddr,
 *       not parsed back from addr). received is how many datagrams came in (0: none waiting);
 *       unsent is None, or the (data, addr) replies the kernel could not take yet (EAGAIN,
 *       ENOBUFS) for the caller to send later. When respond raises, the replies made before it
 *       are sent, the remaining datagrams are dropped and the exception propagates.
 *       Per datagram this saves what the same loop costs in Python: a tuple and a list slot
 *       per reply, and parsing the address text back into a sockaddr (inet_pton).
 *
 * Both hold the GIL throughout: the socket is non-blocking, so no call waits. The receive
 * buffers are static (the GIL serialises callers); they are touched only as deep as packets
 * reach, so a process pays one or two pages per slot, not 64 x 64 KiB.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64
#define SLOT 65535

static char *bufs;  /* MAX_BATCH * SLOT, allocated on first use */
static struct mmsghdr rmsgs[MAX_BATCH];
static struct iovec riov[MAX_BATCH];
static struct sockaddr_storage raddr[MAX_BATCH];

/* dotted-quad text of a (network order) IPv4 address; returns its length (inet_ntop uses
 * sprintf, a large part of the cost of an address tuple) */
/* One outgoing message: the buffer of ``view`` to ``addr``. */
static void
set_msg(struct mmsghdr *m, struct iovec *iov, const Py_buffer *view, void *addr, socklen_t alen)
{
    iov->iov_base = view->buf;
    iov->iov_len = (size_t)view->len;
    memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_name = addr;
    m->msg_hdr.msg_namelen = alen;
}

static int
ipv4_text(const unsigned char *b, char *out)
{
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned int v = b[i];
        if (v >= 100) {
            *p++ = (char)('0' + v / 100);
            v %= 100;
            *p++ = (char)('0' + v / 10);
        } else if (v >= 10) {
            *p++ = (char)('0' + v / 10);
        }
        *p++ = (char)('0' + v % 10);
        if (i < 3)
            *p++ = '.';
    }
    return (int)(p - out);
}

static PyObject *
addr_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        int len = ipv4_text((const unsigned char *)&a->sin_addr, host);
        PyObject *h = PyUnicode_DecodeASCII(host, len, NULL);
        PyObject *port = h ? PyLong_FromLong((long)ntohs(a->sin_port)) : NULL;
        PyObject *t = port ? PyTuple_New(2) : NULL;
        if (t == NULL) {
            Py_XDECREF(h);
            Py_XDECREF(port);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, h);
        PyTuple_SET_ITEM(t, 1, port);
        return t;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo), (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* recvmmsg of up to n datagrams into the static buffers: how many (0 on EAGAIN), or -1 with
 * OSError set */
static int
recv_into(int fd, int n)
{
    if (bufs == NULL) {
        bufs = PyMem_RawMalloc((size_t)MAX_BATCH * SLOT);
        if (bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        riov[i].iov_base = bufs + (size_t)i * SLOT;
        riov[i].iov_len = SLOT;
        memset(&rmsgs[i].msg_hdr, 0, sizeof rmsgs[i].msg_hdr);
        rmsgs[i].msg_hdr.msg_iov = &riov[i];
        rmsgs[i].msg_hdr.msg_iovlen = 1;
        rmsgs[i].msg_hdr.msg_name = &raddr[i];
        rmsgs[i].msg_hdr.msg_namelen = sizeof raddr[i];
    }
    int got;
    do {
        got = recvmmsg(fd, rmsgs, (unsigned int)n, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return got;
}

static int
check_n(int n)
{
    if (n < 1 || n > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "n must be in 1..%d", MAX_BATCH);
        return -1;
    }
    return 0;
}

static PyObject *
recv_batch(PyObject *self, PyObject *args)
{
    int fd, n;
    if (!PyArg_ParseTuple(args, "ii", &fd, &n) || check_n(n) < 0)
        return NULL;
    int got = recv_into(fd, n);
    if (got < 0)
        return NULL;
    PyObject *out = PyList_New(got);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        PyObject *data = PyBytes_FromStringAndSize(riov[i].iov_base, (Py_ssize_t)rmsgs[i].msg_len);
        PyObject *addr = data ? addr_tuple(&raddr[i]) : NULL;
        PyObject *item = addr ? PyTuple_Pack(2, data, addr) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* addr tuple -> sockaddr; 0 ok, -1 with a Python exception set */
static int
parse_addr(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    unsigned int flow = 0, scope = 0;
    if (!PyTuple_Check(addr) || !PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "address must be a (host, port[, flowinfo, scope_id]) tuple");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        *len = sizeof *a4;
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        a6->sin6_flowinfo = htonl(flow);
        a6->sin6_scope_id = scope;
        *len = sizeof *a6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

/* sendmmsg of msgs[0..k): how many were taken before EAGAIN/ENOBUFS (then *err is set); a
 * reply refused for another reason is skipped and counted as taken */
static int
send_msgs(int fd, struct mmsghdr *msgs, int k, int *err)
{
    int done = 0;
    *err = 0;
    while (done < k) {
        int r = sendmmsg(fd, msgs + done, (unsigned int)(k - done), MSG_DONTWAIT);
        if (r > 0) {
            done += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            *err = errno;
            break;
        } else {
            done += 1;  /* this reply cannot be sent (EINVAL, EACCES, ...): skip it */
        }
    }
    return done;
}

static PyObject *
send_batch(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *replies;
    Py_ssize_t start = 0;
    if (!PyArg_ParseTuple(args, "iO!|n", &fd, &PyList_Type, &replies, &start))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(replies);
    if (start < 0 || start > total) {
        PyErr_SetString(PyExc_IndexError, "start out of range");
        return NULL;
    }
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage addrs[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    Py_ssize_t pos = start;
    int err = 0;
    while (pos < total && !err) {
        int k = 0;
        for (; k < MAX_BATCH && pos + k < total; k++) {
            PyObject *item = PyList_GET_ITEM(replies, pos + k);
            socklen_t alen;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "each reply must be a (data, addr) tuple");
                goto fail;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[k], PyBUF_SIMPLE) < 0)
                goto fail;
            if (parse_addr(PyTuple_GET_ITEM(item, 1), &addrs[k], &alen) < 0) {
                PyBuffer_Release(&views[k]);
                goto fail;
            }
            set_msg(&msgs[k], &iov[k], &views[k], &addrs[k], alen);
            continue;
        fail:
            for (int j = 0; j < k; j++)
                PyBuffer_Release(&views[j]);
            return NULL;
        }
        int done = send_msgs(fd, msgs, k, &err);
        for (int j = 0; j < k; j++)
            PyBuffer_Release(&views[j]);
        pos += done;
    }
    return Py_BuildValue("(ni)", pos - start, err);
}

static PyObject *
serve(PyObject *self, PyObject *args)
{
    int fd, n;
    PyObject *respond;
    if (!PyArg_ParseTuple(args, "iiO", &fd, &n, &respond) || check_n(n) < 0)
        return NULL;
    int got = recv_into(fd, n);
    if (got < 0)
        return NULL;
    if (got == 0)
        return Py_BuildValue("(iO)", 0, Py_None);
    /* everything out of the static buffers before any Python code runs (respond could, in
     * principle, reach another recv on this thread or let another thread do one) */
    PyObject *datas[MAX_BATCH], *addrs[MAX_BATCH], *replies[MAX_BATCH];
    struct sockaddr_storage peer[MAX_BATCH];
    socklen_t peerlen[MAX_BATCH];
    int i, k = 0;
    for (i = 0; i < got; i++) {
        datas[i] = PyBytes_FromStringAndSize(riov[i].iov_base, (Py_ssize_t)rmsgs[i].msg_len);
        addrs[i] = datas[i] ? addr_tuple(&raddr[i]) : NULL;
        if (addrs[i] == NULL) {
            Py_XDECREF(datas[i]);
            for (int j = 0; j < i; j++) {
                Py_DECREF(datas[j]);
                Py_DECREF(addrs[j]);
            }
            return NULL;
        }
        memcpy(&peer[i], &raddr[i], rmsgs[i].msg_hdr.msg_namelen);
        peerlen[i] = rmsgs[i].msg_hdr.msg_namelen;
    }
    /* respond to each in order; replies[j] belongs to datagram who[j] */
    int who[MAX_BATCH];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    int failed = 0;
    for (i = 0; i < got && !failed; i++) {
        PyObject *r = PyObject_CallFunctionObjArgs(respond, datas[i], addrs[i], NULL);
        if (r == NULL) {
            failed = 1;
            break;
        }
        if (r == Py_None) {
            Py_DECREF(r);
            continue;
        }
        if (PyObject_GetBuffer(r, &views[k], PyBUF_SIMPLE) < 0) {
            Py_DECREF(r);
            failed = 1;
            break;
        }
        replies[k] = r;
        who[k] = i;
        set_msg(&msgs[k], &iov[k], &views[k], &peer[i], peerlen[i]);
        k++;
    }
    PyObject *exc_type = NULL, *exc_value = NULL, *exc_tb = NULL;
    if (failed)
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);  /* send what was made, then raise */
    int err = 0;
    int sent = k ? send_msgs(fd, msgs, k, &err) : 0;
    PyObject *unsent = Py_None;
    Py_INCREF(unsent);
    if (sent < k && !failed) {
        Py_DECREF(unsent);
        unsent = PyList_New(k - sent);
        for (int j = sent; unsent != NULL && j < k; j++) {
            PyObject *item = PyTuple_Pack(2, replies[j], addrs[who[j]]);
            if (item == NULL) {
                Py_CLEAR(unsent);
                break;
            }
            PyList_SET_ITEM(unsent, j - sent, item);
        }
    }
    for (int j = 0; j < k; j++) {
        PyBuffer_Release(&views[j]);
        Py_DECREF(replies[j]);
    }
    for (i = 0; i < got; i++) {
        Py_DECREF(datas[i]);
        Py_DECREF(addrs[i]);
    }
    if (failed) {
        Py_XDECREF(unsent);
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return NULL;
    }
    if (unsent == NULL)
        return NULL;
    PyObject *out = Py_BuildValue("(iN)", got, unsent);
    return out;
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS, "recv_batch(fd, n) -> [(data, addr), ...] (recvmmsg)"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, replies, start=0) -> (sent, errno) (sendmmsg; stops at EAGAIN)"},
    {"serve", serve, METH_VARARGS,
     "serve(fd, n, respond) -> (received, unsent) (recvmmsg, respond(data, addr) each, sendmmsg)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mmsg", "Batched UDP receive and send (recvmmsg/sendmmsg).", -1, methods,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
