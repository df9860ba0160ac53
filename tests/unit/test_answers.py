"""Answer buffers are reused only once no answer refers to them."""

from __future__ import annotations

import numpy as np

from serving.engine.local.answers import AnswerBuffers


def test_a_buffer_comes_back_only_when_no_view_of_it_is_alive() -> None:
    buffers = AnswerBuffers(keep=2)
    first = buffers.take(100)
    held = first[10:20].reshape(2, 5)  # an answer a caller still holds
    del first
    second = buffers.take(100)
    assert not np.shares_memory(second, held), "a held answer's memory was handed out again"
    del held
    third = buffers.take(50)
    assert third.base is not None and third.base.size == 100  # the first buffer, reused
    assert not np.shares_memory(third, second)


def test_a_larger_answer_gets_a_new_buffer_and_only_a_few_are_kept() -> None:
    buffers = AnswerBuffers(keep=2)
    for size in (10, 20, 30):
        buffers.take(size)
    assert [b.size for b in buffers._free] == [30, 20]
    assert buffers.take(0).size == 0
