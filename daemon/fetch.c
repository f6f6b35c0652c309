/* placeholder */
#include "fetch.h"
