"""STFPM: student-teacher feature pyramid matching (see README.md beside this file)."""

from kdad.methods.stfpm.model import StudentTeacherPyramid

__all__ = ["StudentTeacherPyramid"]
