//! One Milter conversation for one message (work in progress).
