"""The power-cut filesystem (``fs.py``, its rules in ``model.py``) and the tests it runs."""

#: The library the filesystem is built for (Debian's libfuse3-3). mfusepy loads the one
#: ``FUSE_LIBRARY_PATH`` names, else the first libfuse it finds, often libfuse 2.
LIBFUSE3 = "/usr/lib/x86_64-linux-gnu/libfuse3.so.3"
