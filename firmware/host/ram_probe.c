/* size(1) of this object's .bss is the core's RAM: one lkb_board (see `make size`). */
#include "lkb_core.h"

lkb_board lkb_ram_probe;
