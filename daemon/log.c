/* placeholder */
#include "log.h"
