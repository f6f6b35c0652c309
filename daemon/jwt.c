/* placeholder */
#include "jwt.h"
