# Turning any buffer-protocol object into a flat byte view, shared by the extensions.


cdef inline const unsigned char[::1] as_byte_view(object data) except *:
    """A C-contiguous unsigned-char view of `data`; other item formats are viewed as bytes."""
    try:
        return data
    except (ValueError, TypeError):
        # Typed memoryviews insist on format 'B'; array('I'), numpy arrays and friends
        # still expose contiguous bytes through a cast.
        return memoryview(data).cast("B")
