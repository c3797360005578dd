// libtextcam.so is textcam_core linked whole; this unit only gives the library a source of its own.
