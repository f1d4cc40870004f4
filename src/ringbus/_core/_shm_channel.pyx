# cython: language_level=3
"""ShmChannel: byte messages between two processes through a ring in shared memory (csrc/rb_shm.h)."""

cimport cython
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, ESRCH, ETIMEDOUT, errno
from libc.stdint cimport int64_t, uint64_t
from posix.signal cimport kill

from ringbus._core._waiting cimport deadline_ns
from ringbus._core.rb_shm cimport (rb_shm, rb_shm_check, rb_shm_close_side, rb_shm_init, rb_shm_mapping_size,
                                   rb_shm_max_message, rb_shm_peek, rb_shm_release, rb_shm_send_batch, rb_shm_used,
                                   rb_shm_wait_readable, rb_shm_wait_writable)
from ringbus._core.rb_wait cimport rb_monotonic_ns

import atexit
import mmap
import os

from ringbus.errors import Closed, Empty, Full, PeerGone, RingbusError

cdef int64_t SLICE_NS = 100_000_000  # sleep in slices this long, to notice a peer that died
cdef size_t BATCH = 64

# Segments this process created and has not unlinked: removed at a normal exit.
_created = {}

# Bumped in every forked child: a ShmChannel object copied by fork belongs to
# the parent (its pid, its role, its duty to unlink), so the child's copy must
# neither unlink the name nor mark a side of the channel closed.
cdef long _fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _unlink_created():
    pid = os.getpid()
    for name, creator in list(_created.items()):
        if creator == pid:  # a forked child must not remove its parent's segments
            _unlink(name)


atexit.register(_unlink_created)


def _unlink(str name):
    _created.pop(name, None)
    try:
        os.unlink("/dev/shm" + name)
    except FileNotFoundError:
        pass


cdef str _checked_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or "\0" in bare or len(bare) > 250 or bare in (".", ".."):
        raise ValueError(f"name must be 1-250 characters without '/' or NUL, got {name!r}")
    return "/" + bare


@cython.final
cdef class ShmChannel:
    """A one-way channel of byte messages between processes on one host.

    One process creates it (``ShmChannel.create(name, size_bytes)``), another
    attaches (``ShmChannel.attach(name)``); either may send and the other
    receives. Messages are copied once into a ring in shared memory and come
    out whole, in order.

    Concurrency: one sender and one receiver at a time. Threads of one
    process may share a ShmChannel object (each call holds the GIL while it
    touches the ring); two *processes* must not send (or receive) on the same
    channel at once - give each producer its own channel.

    A blocked ``send``/``recv`` spins for ``spin`` seconds (default 50 us,
    settable per object; 0 disables), then sleeps on a futex; every 100 ms it
    checks that the peer process is alive and raises ``PeerGone`` if not.
    """

    def __cinit__(self):
        self._lending = False
        self.spin = 50e-6
        self._pid = os.getpid()
        self._fork_generation = _fork_generation

    def __dealloc__(self):
        self._unmap()

    @staticmethod
    def create(name, size_bytes):
        """Create a channel whose ring holds size_bytes of data (rounded up to a power of two).

        Raises FileExistsError when the name is taken (``ShmChannel.remove(name)``
        clears a segment left by a crashed creator).
        """
        cdef ShmChannel ch = ShmChannel.__new__(ShmChannel)
        path = _checked_name(name)
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool):
            raise TypeError(f"size_bytes must be an int, got {type(size_bytes).__name__}")
        if size_bytes < 64 or size_bytes > (1 << 40):
            raise ValueError(f"size_bytes must be between 64 and 2**40, got {size_bytes}")
        cdef uint64_t capacity = 64
        while capacity < <uint64_t>size_bytes:
            capacity <<= 1
        fd = os.open("/dev/shm" + path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _created[path] = ch._pid
            os.ftruncate(fd, rb_shm_mapping_size(capacity))
            ch._map = mmap.mmap(fd, rb_shm_mapping_size(capacity))
        except BaseException:
            _unlink(path)
            raise
        finally:
            os.close(fd)
        ch._name = path
        ch._creator = True
        ch._pin_map()
        rb_shm_init(ch._shm, capacity, ch._pid)
        return ch

    @staticmethod
    def attach(name):
        """Attach to a channel another process created."""
        cdef ShmChannel ch = ShmChannel.__new__(ShmChannel)
        path = _checked_name(name)
        fd = os.open("/dev/shm" + path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"shared memory segment {path!r} is empty: not a ShmChannel")
            ch._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        ch._name = path
        ch._pin_map()
        rc = rb_shm_check(ch._shm, size)
        if rc != 0:
            ch._unmap()
            reason = {-1: "no ShmChannel header", -2: "a ShmChannel of another version", -3: "a damaged ShmChannel header"}[rc]
            raise ValueError(f"shared memory segment {path!r} holds {reason}")
        return ch

    @staticmethod
    def remove(name):
        """Unlink a segment by name (one a crashed creator left behind); no error if absent."""
        _unlink(_checked_name(name))

    cdef int _pin_map(self) except -1:
        PyObject_GetBuffer(self._map, &self._pin, PyBUF_SIMPLE)
        self._pinned = True
        self._shm = <rb_shm *>self._pin.buf
        return 0

    cdef int _unmap(self) except -1:
        self._shm = NULL
        if self._pinned:
            PyBuffer_Release(&self._pin)
            self._pinned = False
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a recv_view memoryview is still alive: the mapping goes when it does
            self._map = None
        return 0

    cdef int _check_open(self) except -1:
        if self._closing or self._shm == NULL:
            raise Closed(f"ShmChannel {self._name!r} is closed")
        if self._fork_generation != _fork_generation:
            self._adopt_after_fork()
        return 0

    cdef int _adopt_after_fork(self) except -1:
        """In a forked child: this copy starts afresh as an attacher of the parent's segment."""
        self._fork_generation = _fork_generation
        self._pid = os.getpid()
        self._creator = self._sent = self._received = False
        self._lending = False  # the parent's lent record is the parent's to release
        self._inside = 0
        return 0

    cdef int _settle_lent(self) except -1:
        if self._lending:
            self._lending = False
            rb_shm_release(self._shm, self._lent)
        return 0

    cdef int _peer_alive(self, int pid) except -1:
        if pid <= 0 or pid == self._pid:
            return 1
        if kill(pid, 0) == 0:
            return 1
        return 0 if errno == ESRCH else 1

    cdef int _wait(self, bint readable, int64_t deadline, uint64_t length=0) except -1:
        """Block until the ring may have changed: 1, or 0 when the deadline passed.

        For a writer, length is the record it wants to send (it wakes when that fits).
        """
        cdef int64_t slice_ns = SLICE_NS, left
        cdef double spin = self.spin
        cdef int64_t spin_ns = <int64_t>(spin * 1e9) if 0 <= spin <= 1 else 0
        cdef int rc
        cdef rb_shm *s = self._shm
        if deadline >= 0:
            left = deadline - rb_monotonic_ns()
            if left <= 0:
                return 0
            if left < slice_ns:
                slice_ns = left
        # While we sleep without the GIL another thread may close() this
        # object: it then leaves the unmap to the last thread to come out.
        self._inside += 1
        with nogil:
            if readable:
                rc = rb_shm_wait_readable(s, spin_ns, slice_ns)
            else:
                rc = rb_shm_wait_writable(s, length, spin_ns, slice_ns)
        self._inside -= 1
        if self._closing:
            if self._inside == 0:
                self._unmap()
            raise Closed(f"ShmChannel {self._name!r} was closed while waiting")
        if rc == EINTR:
            PyErr_CheckSignals()
        if not readable and s.receiver_closed:
            raise PeerGone(f"the receiver of ShmChannel {self._name!r} closed it")
        if rc == ETIMEDOUT:
            # Only a quiet slice asks whether the peer lives: a wake-up means
            # data or room arrived, which must be taken before any verdict.
            peer = (s.sender_pid or s.creator_pid) if readable else s.receiver_pid
            if not self._peer_alive(peer):
                role = "sending" if readable else "receiving"
                raise PeerGone(f"the {role} process {peer} of ShmChannel {self._name!r} died")
        return 1

    def send(self, data, timeout=None):
        """Copy one message (bytes, bytearray, memoryview or any contiguous buffer) into the ring.

        Waits for room up to timeout seconds (None: no limit), then raises Full.
        """
        cdef Py_buffer view
        cdef const void *buf
        cdef uint64_t length
        cdef int64_t deadline = -2
        self._check_open()
        if isinstance(data, str):
            raise TypeError("data must be a bytes-like buffer, not str: encode it first")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            length = <uint64_t>view.len
            if length > rb_shm_max_message(self._shm):
                raise ValueError(f"message of {length} bytes exceeds this channel's limit of "
                                 f"{rb_shm_max_message(self._shm)} (half its ring); create a larger channel")
            if not self._sent:
                self._sent = True
                self._shm.sender_pid = self._pid
            if self._shm.receiver_closed:
                raise PeerGone(f"the receiver of ShmChannel {self._name!r} closed it")
            buf = view.buf
            while not rb_shm_send_batch(self._shm, &buf, &length, 1):
                if deadline == -2:
                    deadline = deadline_ns(timeout)
                if not self._wait(False, deadline, length):
                    raise Full(f"ShmChannel {self._name!r} is full: send() timed out")
        finally:
            PyBuffer_Release(&view)

    def send_many(self, messages, timeout=None):
        """Send a sequence of messages in order, publishing each run at once.

        Waits for room as needed; returns how many were sent, fewer than
        len(messages) only when timeout expired.
        """
        cdef Py_buffer views[64]
        cdef const void *bufs[64]
        cdef uint64_t lens[64]
        cdef size_t held = 0, sent_now, i
        cdef Py_ssize_t total = 0, start = 0, n
        cdef int64_t deadline = -2
        cdef uint64_t limit
        self._check_open()
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        limit = rb_shm_max_message(self._shm)
        if not self._sent:
            self._sent = True
            self._shm.sender_pid = self._pid
        try:
            while start < n:
                held = 0
                while held < BATCH and start + <Py_ssize_t>held < n:
                    data = items[start + held]
                    if isinstance(data, str):
                        raise TypeError(f"messages[{start + held}] is a str: encode it first")
                    PyObject_GetBuffer(data, &views[held], PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
                    bufs[held] = views[held].buf
                    lens[held] = <uint64_t>views[held].len
                    held += 1
                    if lens[held - 1] > limit:
                        raise ValueError(f"messages[{start + held - 1}] of {lens[held - 1]} bytes exceeds "
                                         f"this channel's limit of {limit}")
                i = 0
                while i < held:
                    if self._shm.receiver_closed:
                        raise PeerGone(f"the receiver of ShmChannel {self._name!r} closed it")
                    sent_now = rb_shm_send_batch(self._shm, &bufs[i], &lens[i], held - i)
                    i += sent_now
                    total += sent_now
                    if i < held:
                        if deadline == -2:
                            deadline = deadline_ns(timeout)
                        if not self._wait(False, deadline, lens[i]):
                            return total
                for i in range(held):
                    PyBuffer_Release(&views[i])
                held = 0
                start = total
        finally:
            for i in range(held):
                PyBuffer_Release(&views[i])
        return total

    cdef object _recv_record(self, int64_t deadline, bint view):
        cdef const char *payload
        cdef uint64_t length
        self._check_open()
        self._settle_lent()
        if not self._received:
            self._received = True
            self._shm.receiver_pid = self._pid
        cdef int found
        while True:
            found = rb_shm_peek(self._shm, &payload, &length)
            if found:
                break
            if self._shm.sender_closed:
                # re-check: the last record may have landed just before the close
                found = rb_shm_peek(self._shm, &payload, &length)
                if found:
                    break
                raise PeerGone(f"the sender of ShmChannel {self._name!r} closed it")
            if not self._wait(True, deadline):
                raise Empty(f"ShmChannel {self._name!r} is empty: recv() timed out")
        if found < 0:
            raise RingbusError(f"ShmChannel {self._name!r} holds a damaged record (its length runs past the ring)")
        if view:
            self._lent = length
            self._lending = True
            # A view of the mmap object itself: it keeps the mapping alive (mmap
            # refuses to close while exported), so a view that outlives the
            # channel reads stale bytes, never unmapped memory.
            offset = <Py_ssize_t>(payload - <const char *>self._pin.buf)
            return memoryview(self._map)[offset:offset + <Py_ssize_t>length].toreadonly()
        out = PyBytes_FromStringAndSize(payload, <Py_ssize_t>length)
        rb_shm_release(self._shm, length)
        return out

    def recv(self, timeout=None):
        """Remove and return the oldest message as bytes.

        Waits up to timeout seconds (None: no limit), then raises Empty;
        raises PeerGone once the sender closed the channel (or died) and it is drained.
        """
        return self._recv_record(deadline_ns(timeout), False)

    def recv_view(self, timeout=None):
        """Like recv, without the copy: a read-only memoryview into the ring.

        The view is valid until the next recv*/close call on this channel,
        which hands its bytes back to the sender; copy what you keep.
        """
        return self._recv_record(deadline_ns(timeout), True)

    def recv_many(self, max_messages, timeout=None):
        """Wait up to timeout for at least one message, then return up to max_messages without waiting."""
        cdef const char *payload
        cdef uint64_t length
        cdef Py_ssize_t want = max_messages
        if want < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        out = [self._recv_record(deadline_ns(timeout), False)]
        while len(out) < want and rb_shm_peek(self._shm, &payload, &length) > 0:
            out.append(PyBytes_FromStringAndSize(payload, <Py_ssize_t>length))
            rb_shm_release(self._shm, length)
        return out

    def __iter__(self):
        """Yield messages until the sender closes the channel."""
        while True:
            try:
                yield self.recv()
            except PeerGone:
                if not self._closing and self._shm != NULL and self._shm.sender_closed:
                    return
                raise

    def close(self):
        """Mark this side closed (waking the peer), unmap, and unlink the name if we created it.

        A thread of ours blocked in send/recv on this object wakes with Closed;
        the mapping goes when the last such thread has left it. In a forked
        child, closing an inherited copy only drops the child's mapping.
        """
        if self._closing or self._shm == NULL:
            return
        if self._fork_generation != _fork_generation:
            self._adopt_after_fork()
        self._settle_lent()
        self._closing = True
        if self._sent:
            rb_shm_close_side(self._shm, 1)
        if self._received:
            rb_shm_close_side(self._shm, 0)
        if not self._inside:  # else the last of our sleepers (woken above) unmaps
            self._unmap()
        if self._creator:
            _unlink(self._name)

    def unlink(self):
        """Remove the name now (peers keep their mappings); close() does this for the creator."""
        _unlink(self._name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def name(self):
        """The segment name (under /dev/shm)."""
        return self._name

    @property
    def closed(self):
        """True once this object was closed."""
        return self._closing or self._shm == NULL

    @property
    def capacity(self):
        """Bytes in the ring's data area."""
        self._check_open()
        return self._shm.capacity

    @property
    def max_message(self):
        """Largest message this channel takes, in bytes."""
        self._check_open()
        return rb_shm_max_message(self._shm)

    def bytes_used(self):
        """Bytes of the ring in use right now (records with their framing)."""
        self._check_open()
        return rb_shm_used(self._shm)

    def __repr__(self):
        if self._shm == NULL:
            return f"<ringbus.ShmChannel {self._name!r} closed>"
        return f"<ringbus.ShmChannel {self._name!r} capacity={self._shm.capacity} used={rb_shm_used(self._shm)}>"
