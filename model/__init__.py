"""The sync expert: face and audio encoders, their loss, and scoring (see README)."""
