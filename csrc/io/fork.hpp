// A process-wide object that must survive fork(): made once, never destroyed
// (it may be used during static teardown), with pthread_atfork handlers
// installed when it is made. Typically prepare locks its mutexes (a child never
// inherits one held by a thread it does not have) and parent/child unlock them.
#pragma once
#include <pthread.h>

namespace hauler::io {

template <class T, void (*Prepare)(T&), void (*Parent)(T&), void (*Child)(T&)>
T& fork_safe_singleton() {
  static T* const obj = [] {
    T* t = new T;
    pthread_atfork([] { Prepare(fork_safe_singleton<T, Prepare, Parent, Child>()); },
                   [] { Parent(fork_safe_singleton<T, Prepare, Parent, Child>()); },
                   [] { Child(fork_safe_singleton<T, Prepare, Parent, Child>()); });
    return t;
  }();
  return *obj;
}

}  // namespace hauler::io
