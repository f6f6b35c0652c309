/* placeholder */
#include "token.h"
