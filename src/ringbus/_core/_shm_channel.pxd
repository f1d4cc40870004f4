from libc.stdint cimport int64_t, uint64_t

from ringbus._core.rb_shm cimport rb_shm


cdef class ShmChannel:
    cdef rb_shm *_shm            # the header at the start of the mapping; NULL once closed
    cdef object _map             # the mmap.mmap holding the mapping; pinned by _pin while open
    cdef Py_buffer _pin          # our export of _map: keeps the address valid
    cdef bint _pinned            # _pin is held
    cdef str _name               # the segment name, with its leading "/"
    cdef bint _creator           # this object created the segment, so close() unlinks it
    cdef bint _sent              # this side has sent: close() marks the sender side closed
    cdef bint _received          # this side has received: close() marks the receiver side closed
    cdef uint64_t _lent          # length of the record lent by recv_view, released by the next recv
    cdef bint _lending           # a recv_view record awaits release
    cdef int _pid                # our process id when opened
    cdef long _fork_generation   # forks seen by this process when opened: a forked child's copy is foreign
    cdef int _inside             # threads of ours sleeping in _wait: close() leaves the unmap to the last
    cdef bint _closing           # close() was called; the mapping goes once no thread is inside
    cdef public double spin      # seconds to spin before sleeping on the futex

    cdef int _pin_map(self) except -1
    cdef int _unmap(self) except -1
    cdef int _check_open(self) except -1
    cdef int _settle_lent(self) except -1
    cdef int _peer_alive(self, int pid) except -1
    cdef int _wait(self, bint readable, int64_t deadline, uint64_t length=*) except -1
    cdef int _adopt_after_fork(self) except -1
    cdef object _recv_record(self, int64_t deadline, bint view)
