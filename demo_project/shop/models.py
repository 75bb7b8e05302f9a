from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    published = models.BooleanField(default=False)
    # The foreign key is the point: reading ``post.author`` lazily is a sync query.
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")

    def __str__(self) -> str:
        return self.title
