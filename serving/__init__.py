"""Serving a bundle beyond one process: a Ray Serve application (:mod:`textcam.serving.ray_app`)."""
