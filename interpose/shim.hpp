// What interpose.cpp shares with the other files of the shim (fortran.cpp).
#pragma once

namespace shim {
void count_fortran();  // one Fortran call intercepted (the per-rank report's `fortran=`)
}
