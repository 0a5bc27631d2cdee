"""The sign-in portal: GitLab OAuth, a user's keys and usage, and the admin pages."""
