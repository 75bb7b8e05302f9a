"""A tiny blog-shaped app with one view per async-safety scenario (see ``views``)."""
