"""Training the Aligner (§3.2, §4.1): :mod:`.aligner_task` (the task and Eq. 2 with :mod:`.loss`), :mod:`.data`
(AvatarWorld and folder sources), :mod:`.loop` (the resumable accelerate loop, shared with LLaVA-mini's stage 1,
:mod:`plvm.models.llava_mini.stage1_task`), :mod:`.row_fit` (output-row fit) and :mod:`.word_anchor` (stage 0)."""
