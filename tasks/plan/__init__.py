"""Planning one image: the chunk grid with halos, and the job every later stage works on."""
