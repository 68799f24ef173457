// Serving without HTTP: see the files of this target.
