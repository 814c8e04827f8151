"""A user's own sitecustomize: mirror-py must hand over to it."""

import os

os.environ["USER_SITECUSTOMIZE_RAN"] = "yes"
