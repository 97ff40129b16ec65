// Registers the rANS coder bindings (submodule `rans`) on the extension module.
#pragma once

#include <pybind11/pybind11.h>

void bind_coder(pybind11::module_& m);
