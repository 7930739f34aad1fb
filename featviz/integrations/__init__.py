"""Optional bridges from training frameworks to featviz runs (each needs its extra, e.g. ``featviz[lightning]``)."""
