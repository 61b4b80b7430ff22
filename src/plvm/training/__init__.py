"""Training the Aligner (§3.2, §4.1): :mod:`.aligner_task` (the task and Eq. 2 with :mod:`.loss`), :mod:`.data`
(AvatarWorld and folder sources), :mod:`.loop` (the resumable accelerate loop, shared with LLaVA-mini's stage 1,
:mod:`plvm.models.llava_mini.stage1_task`), :mod:`.head_anchor` (the context tokens' init) and :mod:`.word_anchor`
(the cosine fit it shares with LLaVA-mini's stage 0)."""
